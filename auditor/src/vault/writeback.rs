//! Streaming writeback of the active segment: what the chain appends is written to disk
//! in windows as it goes, and dropped from the page cache once it is on disk.
//!
//! Segments are append-only and read back only by `vault verify|query|erase` and the rare
//! resend check, so caching them is of no use to the vault and costs the host: a vault
//! taking 300,000 events/s writes ~200 MB/s, and left to the page cache that fills
//! gigabytes of memory other programs had cached. It also cost the writer itself: on
//! this project's benchmark VM (free pages reported back to the hypervisor), the kernel
//! time of `write(2)` into a growing page cache rose from 14 % to ~60 % of a core once
//! ~2 GB was cached, and the sink thread fell behind. Written window by window, started
//! with `sync_file_range(WRITE)`, waited for once [`IN_FLIGHT`] more bytes followed and
//! then `POSIX_FADV_DONTNEED`, the cache a segment holds stays under [`IN_FLIGHT`] plus
//! two windows and the kernel time flat (docs/PERF-HISTORY.md; docs/VAULT.md).
//!
//! The bytes in flight are what absorbs a burst faster than the disk: the writer waits
//! only for data that far behind its newest window, so a disk that is slower than the
//! event rate for a moment costs no wait until it is [`IN_FLIGHT`] behind.
//!
//! Waiting for a window's writeback consumes its I/O error (the kernel reports a
//! writeback error once per open file), which the next `fdatasync` would then not see, so
//! the error is kept here and [`Writeback::sync_data`], the store's only way to sync a
//! segment, fails with it.
//!
//! A file system that refuses `sync_file_range` (not a data error) has its appends left
//! to the page cache.

use std::{fs::File, os::fd::AsRawFd as _};

/// Bytes written before their writeback is started (~40 ms of appends at 200 MB/s).
pub(crate) const WINDOW: u64 = 8 << 20;

/// Bytes whose writeback was started and is not waited for yet, behind the newest window.
pub(crate) const IN_FLIGHT: u64 = 32 << 20;

/// Where the active segment's writeback stands.
#[derive(Debug, Default)]
pub(crate) struct Writeback {
    /// Writeback was started for `[0, started)`.
    started: u64,
    /// `[0, dropped)` is on disk and out of the page cache.
    dropped: u64,
    /// A writeback error not yet reported by a sync.
    error: Option<std::io::Error>,
    /// The file system refused `sync_file_range` (it is not a data error): appends are
    /// left to the page cache, as before this module existed.
    unsupported: bool,
}

impl Writeback {
    /// For a segment whose first `len` bytes are already there (opened, or just created):
    /// only what is appended from now on is managed.
    pub(crate) fn at(len: u64) -> Self {
        Writeback {
            started: len,
            dropped: len,
            error: None,
            unsupported: false,
        }
    }

    /// Called after the file grew to `len`: starts writeback of the newest full window,
    /// and waits for and drops what is more than [`IN_FLIGHT`] behind it.
    pub(crate) fn appended(&mut self, file: &File, len: u64) {
        if self.unsupported || len < self.started.saturating_add(WINDOW) {
            return;
        }
        // Errors of starting writeback (a submission failure) are the same errors the
        // wait below, or the next sync, returns: keep the first one.
        let started = sync_range(
            file,
            self.started,
            len - self.started,
            libc::SYNC_FILE_RANGE_WRITE,
        );
        if started.as_ref().is_err_and(refused) {
            tracing::info!(
                "the vault's file system does not support sync_file_range: segments are left to the page cache"
            );
            self.unsupported = true;
            return;
        }
        self.note(started);
        self.started = len;
        let settled = self.started.saturating_sub(IN_FLIGHT);
        if settled >= self.dropped.saturating_add(WINDOW) {
            let (from, to) = (self.dropped, settled);
            let waited = sync_range(
                file,
                from,
                to - from,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
            match waited {
                Ok(()) => {
                    // Advice: a refusal leaves the pages cached, and loses nothing.
                    let _ = drop_cached(file, from, to - from);
                    self.dropped = to;
                }
                Err(e) => self.note(Err(e)),
            }
        }
    }

    /// A segment is complete (the chain moved on to the next one): everything in it is
    /// written and synced, and its cached pages dropped.
    pub(crate) fn finish(&mut self, file: &File) -> std::io::Result<()> {
        self.sync_data(file)?;
        // Advice only: a failure leaves pages cached, nothing else.
        let _ = drop_cached(file, 0, 0);
        Ok(())
    }

    /// `fdatasync` of the segment, failing with a writeback error seen since the last
    /// sync if there was one (see the module doc).
    pub(crate) fn sync_data(&mut self, file: &File) -> std::io::Result<()> {
        self.take_error()?;
        file.sync_data()
    }

    /// The writeback error seen since the last call, if any.
    fn take_error(&mut self) -> std::io::Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn note(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }
}

/// An error that says the call is not supported here, not that data failed to reach the
/// disk.
fn refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE)
    )
}

fn offset(v: u64) -> std::io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| std::io::Error::other("file offset out of range"))
}

fn sync_range(file: &File, from: u64, len: u64, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: sync_file_range(2) on a file descriptor this File owns; no memory is passed.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset(from)?, offset(len)?, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `len == 0`: to the end of the file.
fn drop_cached(file: &File, from: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: posix_fadvise(2) on a file descriptor this File owns; no memory is passed.
    let r = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset(from)?,
            offset(len)?,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    // posix_fadvise returns the error number instead of setting errno.
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(r))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// Pages of `file` in the page cache (mincore over a read-only mapping).
    fn cached_pages(file: &File, len: usize) -> usize {
        let page = 4096;
        let pages = len.div_ceil(page);
        // SAFETY: a private read-only mapping of `len` bytes of our file, unmapped below;
        // mincore writes one byte per page into a vector of that many bytes.
        unsafe {
            let m = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(m, libc::MAP_FAILED, "mmap");
            let mut vec = vec![0u8; pages];
            let r = libc::mincore(m, len, vec.as_mut_ptr());
            libc::munmap(m, len);
            assert_eq!(r, 0, "mincore");
            vec.iter().filter(|b| *b & 1 == 1).count()
        }
    }

    /// A directory on a disk file system: tmpfs pages cannot leave the page cache.
    fn disk_tempdir() -> tempfile::TempDir {
        let tmp = std::env::temp_dir();
        // SAFETY: statfs(2) fills the zeroed struct; the path is a NUL-terminated copy.
        let on_tmpfs = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            let c = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes()).expect("path");
            libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
        };
        if on_tmpfs {
            tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir")
        } else {
            tempfile::tempdir().expect("tempdir")
        }
    }

    #[test]
    fn appended_windows_leave_the_page_cache_once_written() {
        let dir = disk_tempdir();
        let path = dir.path().join("seg");
        let mut f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("create");
        let mut wb = Writeback::at(0);
        let chunk = vec![7u8; 1 << 20];
        let total = IN_FLIGHT + 6 * WINDOW;
        let mut len = 0u64;
        while len < total {
            f.write_all(&chunk).expect("write");
            len += chunk.len() as u64;
            wb.appended(&f, len);
        }
        wb.take_error().expect("no writeback error");
        let cached = cached_pages(&f, total as usize) as u64 * 4096;
        // At most what is in flight, the window being written and the one just started.
        assert!(
            cached <= IN_FLIGHT + 2 * WINDOW,
            "{cached} bytes of {total} still cached"
        );
        assert!(
            wb.dropped >= total - IN_FLIGHT - 2 * WINDOW,
            "dropped only {}",
            wb.dropped
        );
        wb.finish(&f).expect("finish");
        let bytes = std::fs::read(&path).expect("read back");
        assert_eq!(bytes.len() as u64, total);
        assert!(bytes.iter().all(|b| *b == 7), "contents changed");
    }

    #[test]
    fn a_file_without_writeback_is_left_alone_without_an_error() {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two-element array; both ends are owned below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
        // SAFETY: fresh descriptors from pipe(2), each owned exactly once.
        let (r, w) = unsafe {
            use std::os::fd::FromRawFd as _;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        let mut wb = Writeback::at(0);
        wb.appended(&w, 3 * WINDOW);
        assert!(
            wb.unsupported,
            "sync_file_range on a pipe is refused (ESPIPE)"
        );
        wb.take_error().expect("a refusal is not a writeback error");
        wb.appended(&w, 8 * WINDOW);
        assert_eq!((wb.started, wb.dropped), (0, 0));
        drop(r);
    }

    #[test]
    fn what_was_there_before_is_not_touched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seg");
        std::fs::write(&path, vec![1u8; 4 * WINDOW as usize]).expect("write");
        let f = File::options().append(true).open(&path).expect("open");
        let mut wb = Writeback::at(4 * WINDOW);
        wb.appended(&f, 4 * WINDOW);
        assert_eq!((wb.started, wb.dropped), (4 * WINDOW, 4 * WINDOW));
    }
}
