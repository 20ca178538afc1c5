//! Canonical JSON straight from a `Serialize` value: object keys sorted by their bytes, no
//! whitespace, strings and numbers written exactly as `serde_json` writes them.
//!
//! The bytes equal [`canonical_json`](super::record::canonical_json) of the same value
//! turned into a `serde_json::Value`, which is what the vault server stores for what an
//! agent sends; the embedded local vault gets them without building that tree (a map
//! allocation per object and a string per key were most of its cost per event).
//!
//! How an object is sorted without a tree: its values are written one after another at
//! the end of the output, each key and byte range noted; at the object's end the entries
//! are reordered by key into a scratch buffer that replaces those bytes. A key given twice
//! keeps its last value, as a map would. Objects of one type come with the same keys in
//! the same order, so each shape's sorted order and rendered keys are remembered and found
//! again by comparing the key bytes. The buffers and that cache live in an [`Encoder`],
//! reused from one event to the next, so encoding allocates nothing once warm.

use std::ops::Range;

use serde::{
    Serialize,
    ser::{self, Impossible},
};

/// Why a value has no JSON form (a map key that is not a string or an integer, or a
/// custom `Serialize` that failed).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode as canonical JSON: {0}")]
pub struct CanonicalError(String);

impl ser::Error for CanonicalError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        CanonicalError(msg.to_string())
    }
}

/// The canonical JSON of `value`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    Encoder::default().encode(value).map(<[u8]>::to_vec)
}

/// Reusable buffers for encoding many values.
#[derive(Default)]
pub struct Encoder {
    out: Vec<u8>,
    bufs: Bufs,
}

impl Encoder {
    /// The canonical JSON of `value`, valid until the next call.
    pub fn encode<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<&[u8], CanonicalError> {
        self.out.clear();
        self.bufs.entries.clear();
        value.serialize(Ser {
            out: &mut self.out,
            bufs: &mut self.bufs,
        })?;
        Ok(&self.out)
    }
}

/// The entries of every object still open (innermost last), their keys, and the buffers
/// a closing object is sorted with.
#[derive(Default)]
struct Bufs {
    entries: Vec<Entry>,
    /// Key bytes of the open objects' entries in arrival order, each followed by
    /// [`KEY_END`] (and a map key awaiting its value).
    keys: Vec<u8>,
    sorted: Vec<u8>,
    /// Object shapes seen lately (see [`Shape`]), newest last.
    shapes: Vec<Shape>,
}

/// Ends each key in [`Bufs::keys`]: a byte that never occurs in UTF-8, so the sequence of
/// keys of an object is one unambiguous byte string.
const KEY_END: u8 = 0xff;

/// How many object shapes are remembered (an event stream has a handful).
const SHAPE_CACHE_SLOTS: usize = 16;

/// One object shape: its keys in arrival order, and how to write such an object sorted.
/// Objects of one type arrive with the same keys in the same order, so a shape found by
/// comparing the key bytes (one `memcmp`) replaces sorting and escaping keys.
struct Shape {
    /// The keys in arrival order, each followed by [`KEY_END`].
    arrival: Vec<u8>,
    /// Per output position: the entry (arrival index) and its rendered `"key":`. A key
    /// given more than once appears once, with its last value.
    out: Vec<(u32, Range<usize>)>,
    rendered: Vec<u8>,
}

impl Shape {
    /// Sorts the keys of `entries` (their bytes in `keys`), the slow way.
    fn new(entries: &[Entry], keys: &[u8], arrival: &[u8]) -> Shape {
        let key = |e: &Entry| keys.get(e.key.clone()).unwrap_or_default();
        let mut order: Vec<u32> = (0..entries.len() as u32).collect();
        // Stable: among equal keys the last given ends up last, and wins below.
        order.sort_by(|&a, &b| {
            let ka = entries.get(a as usize).map(key).unwrap_or_default();
            let kb = entries.get(b as usize).map(key).unwrap_or_default();
            ka.cmp(kb)
        });
        let mut rendered = Vec::new();
        let mut out = Vec::with_capacity(order.len());
        for (i, &at) in order.iter().enumerate() {
            let this = entries.get(at as usize).map(key);
            let next = order
                .get(i + 1)
                .and_then(|&n| entries.get(n as usize))
                .map(key);
            if next.is_some() && next == this {
                continue; // a later value for the same key replaces this one
            }
            let from = rendered.len();
            write_key(this.unwrap_or_default(), &mut rendered);
            rendered.push(b':');
            out.push((at, from..rendered.len()));
        }
        Shape {
            arrival: arrival.to_vec(),
            out,
            rendered,
        }
    }
}

#[derive(Clone)]
struct Entry {
    /// The key's bytes in [`Bufs::keys`] (without its [`KEY_END`]).
    key: Range<usize>,
    value: Range<usize>,
}

/// A key as a JSON string. Keys arrive as `&str`, so the bytes are UTF-8 (the lossy
/// conversion never changes them).
fn write_key(key: &[u8], out: &mut Vec<u8>) {
    write_str(out, &String::from_utf8_lossy(key));
}

/// A scalar, written by serde_json itself so its bytes are serde_json's.
fn scalar<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), CanonicalError> {
    serde_json::to_writer(out, v).map_err(|e| CanonicalError(e.to_string()))
}

/// `s` as a JSON string, escaped exactly as serde_json escapes it: `"` and `\\` with a
/// backslash, the six short escapes, other control bytes as `\u00xx` (lowercase hex);
/// everything else, DEL and non-ASCII included, as is. Written here rather than through
/// `serde_json::to_writer` because strings are most of an event and the per-call
/// overhead of that path was the largest item in the sink's profile; the property test
/// at the end of this file compares both on arbitrary strings.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut clean_from = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        // Eight bytes at a time while none of them needs escaping (most strings: none).
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !needs_escape_swar(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        i += 1;
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        let at = i - 1;
        out.extend_from_slice(bytes.get(clean_from..at).unwrap_or_default());
        clean_from = i;
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            _ => 0,
        };
        if short != 0 {
            out.extend_from_slice(&[b'\\', short]);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        }
    }
    out.extend_from_slice(bytes.get(clean_from..).unwrap_or_default());
    out.push(b'"');
}

/// Whether any of the eight bytes in `w` is below 0x20, `"` or `\\` (the bytes JSON
/// escapes). The classic SWAR tests: `(x - 0x01..) & !x & 0x80..` is non-zero exactly when
/// some byte of `x` is zero, and `(w - 0x20..) & !w & 0x80..` when some byte is below 0x20
/// (a byte at or above 0x80 never counts: its `!w` bit is clear, and it cannot borrow
/// into its neighbour unless a lower byte already matched).
fn needs_escape_swar(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    control | quote | backslash != 0
}

/// Serializer methods for integers: their decimal text, by `itoa` as serde_json does.
macro_rules! integers {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<(), CanonicalError> {
            self.out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            Ok(())
        }
    )*};
}

/// Key serializer methods that write the value's text (integers and chars, as serde_json
/// does for map keys).
macro_rules! key_text {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<(), CanonicalError> {
            self.text(v)
        }
    )*};
}

/// The array impls: each element after a comma, `]` at the end.
macro_rules! seq_impls {
    ($($tr:ident::$method:ident),*) => {$(
        impl ser::$tr for Seq<'_> {
            type Ok = ();
            type Error = CanonicalError;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CanonicalError> {
                self.element(v)
            }
            fn end(self) -> Result<(), CanonicalError> {
                self.close();
                Ok(())
            }
        }
    )*};
}

struct Ser<'a> {
    out: &'a mut Vec<u8>,
    bufs: &'a mut Bufs,
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = CanonicalError;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Wrapped<Seq<'a>>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Wrapped<Object<'a>>;

    integers!(serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64);

    fn serialize_char(self, v: char) -> Result<(), CanonicalError> {
        write_str(self.out, v.encode_utf8(&mut [0u8; 4]));
        Ok(())
    }

    fn serialize_bool(self, v: bool) -> Result<(), CanonicalError> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), CanonicalError> {
        // A `Value` holds at most 64 bits: refuse what it would refuse.
        match i64::try_from(v) {
            Ok(v) => scalar(self.out, &v),
            Err(_) => match u64::try_from(v) {
                Ok(v) => scalar(self.out, &v),
                Err(_) => Err(CanonicalError(format!("integer {v} does not fit 64 bits"))),
            },
        }
    }
    fn serialize_u128(self, v: u128) -> Result<(), CanonicalError> {
        match u64::try_from(v) {
            Ok(v) => scalar(self.out, &v),
            Err(_) => Err(CanonicalError(format!("integer {v} does not fit 64 bits"))),
        }
    }
    fn serialize_f32(self, v: f32) -> Result<(), CanonicalError> {
        // As `Value` stores it: widened to f64 (non-finite becomes null).
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), CanonicalError> {
        match serde_json::Number::from_f64(v) {
            Some(n) => {
                self.out.extend_from_slice(n.to_string().as_bytes());
                Ok(())
            }
            None => self.serialize_unit(),
        }
    }
    fn serialize_str(self, v: &str) -> Result<(), CanonicalError> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), CanonicalError> {
        scalar(self.out, v)
    }
    fn serialize_none(self) -> Result<(), CanonicalError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CanonicalError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), CanonicalError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), CanonicalError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), CanonicalError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        // `{"variant":value}`: one key, already in order.
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
        value.serialize(Ser {
            out: &mut *self.out,
            bufs: &mut *self.bufs,
        })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a>, CanonicalError> {
        self.out.push(b'[');
        Ok(Seq {
            out: self.out,
            bufs: self.bufs,
            first: true,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, CanonicalError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Seq<'a>, CanonicalError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Wrapped<Seq<'a>>, CanonicalError> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
        Ok(Wrapped(self.serialize_seq(Some(len))?))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, CanonicalError> {
        Ok(Object::new(self.out, self.bufs))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, CanonicalError> {
        Ok(Object::new(self.out, self.bufs))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Wrapped<Object<'a>>, CanonicalError> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
        Ok(Wrapped(Object::new(self.out, self.bufs)))
    }
}

/// An array being written.
pub struct Seq<'a> {
    out: &'a mut Vec<u8>,
    bufs: &'a mut Bufs,
    first: bool,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Ser {
            out: &mut *self.out,
            bufs: &mut *self.bufs,
        })
    }

    fn close(self) {
        self.out.push(b']');
    }
}

// serde asks for sequences, tuples and tuple structs separately; here they are one array.
seq_impls!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field
);

/// An object being written: values in arrival order at the end of `out`, sorted at `end`.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    bufs: &'a mut Bufs,
    /// Where this object's bytes start in `out`.
    start: usize,
    /// Where this object's entries and key bytes start in `bufs` (those above are its own).
    first_entry: usize,
    first_key: usize,
    /// A map key given by `serialize_key` (its bytes in `bufs.keys`), awaiting its value.
    key: Option<Range<usize>>,
}

impl<'a> Object<'a> {
    fn new(out: &'a mut Vec<u8>, bufs: &'a mut Bufs) -> Self {
        Object {
            start: out.len(),
            first_entry: bufs.entries.len(),
            first_key: bufs.keys.len(),
            out,
            bufs,
            key: None,
        }
    }

    fn entry<T: Serialize + ?Sized>(
        &mut self,
        key: Range<usize>,
        value: &T,
    ) -> Result<(), CanonicalError> {
        let from = self.out.len();
        // A nested object pushes its entries and keys above ours and pops them on close.
        value.serialize(Ser {
            out: &mut *self.out,
            bufs: &mut *self.bufs,
        })?;
        self.bufs.entries.push(Entry {
            key,
            value: from..self.out.len(),
        });
        Ok(())
    }

    fn push_key(&mut self, key: &[u8]) -> Range<usize> {
        let at = self.bufs.keys.len();
        self.bufs.keys.extend_from_slice(key);
        let end = self.bufs.keys.len();
        self.bufs.keys.push(KEY_END);
        at..end
    }

    /// Writes the sorted object in place of the values; hands back the output.
    fn close(self) -> &'a mut Vec<u8> {
        let Bufs {
            entries,
            keys,
            sorted,
            shapes,
        } = &mut *self.bufs;
        let own = entries.get(self.first_entry..).unwrap_or_default();
        let arrival = keys.get(self.first_key..).unwrap_or_default();
        let found = shapes
            .iter()
            .rposition(|sh| sh.arrival.len() == arrival.len() && sh.arrival == arrival);
        let at = match found {
            Some(i) => i,
            None => {
                if shapes.len() >= SHAPE_CACHE_SLOTS {
                    shapes.remove(0);
                }
                shapes.push(Shape::new(own, keys, arrival));
                shapes.len() - 1
            }
        };
        sorted.clear();
        sorted.push(b'{');
        if let Some(shape) = shapes.get(at) {
            for (i, (entry, key)) in shape.out.iter().enumerate() {
                if i > 0 {
                    sorted.push(b',');
                }
                sorted.extend_from_slice(shape.rendered.get(key.clone()).unwrap_or_default());
                let value = own.get(*entry as usize).map(|e| e.value.clone());
                sorted.extend_from_slice(value.and_then(|v| self.out.get(v)).unwrap_or(b"null"));
            }
        }
        sorted.push(b'}');
        entries.truncate(self.first_entry);
        keys.truncate(self.first_key);
        if self.start == 0 {
            // The outermost object: the sorted bytes are the whole output.
            std::mem::swap(self.out, sorted);
        } else {
            self.out.truncate(self.start);
            self.out.extend_from_slice(sorted);
        }
        self.out
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), CanonicalError> {
        let at = self.bufs.keys.len();
        key.serialize(KeySer {
            keys: &mut self.bufs.keys,
        })?;
        let end = self.bufs.keys.len();
        self.bufs.keys.push(KEY_END);
        self.key = Some(at..end);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CanonicalError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| CanonicalError("map value without a key".into()))?;
        self.entry(key, v)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.close();
        Ok(())
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), CanonicalError> {
        let key = self.push_key(key.as_bytes());
        self.entry(key, v)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.close();
        Ok(())
    }
}

/// A variant's content inside `{"variant":...}`.
pub struct Wrapped<T>(T);

impl ser::SerializeTupleVariant for Wrapped<Seq<'_>> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CanonicalError> {
        self.0.element(v)
    }
    fn end(self) -> Result<(), CanonicalError> {
        let Wrapped(seq) = self;
        seq.out.extend_from_slice(b"]}");
        Ok(())
    }
}

impl ser::SerializeStructVariant for Wrapped<Object<'_>> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), CanonicalError> {
        let key = self.0.push_key(key.as_bytes());
        self.0.entry(key, v)
    }
    fn end(self) -> Result<(), CanonicalError> {
        let Wrapped(obj) = self;
        obj.close().push(b'}');
        Ok(())
    }
}

/// Map keys: JSON keys are strings; integers and chars become their text, as serde_json
/// does. Anything else is refused.
struct KeySer<'k> {
    keys: &'k mut Vec<u8>,
}

impl KeySer<'_> {
    fn text(self, v: impl std::fmt::Display) -> Result<(), CanonicalError> {
        use std::io::Write;
        write!(self.keys, "{v}").map_err(|e| CanonicalError(e.to_string()))
    }
}

impl ser::Serializer for KeySer<'_> {
    type Ok = ();
    type Error = CanonicalError;
    type SerializeSeq = Impossible<(), CanonicalError>;
    type SerializeTuple = Impossible<(), CanonicalError>;
    type SerializeTupleStruct = Impossible<(), CanonicalError>;
    type SerializeTupleVariant = Impossible<(), CanonicalError>;
    type SerializeMap = Impossible<(), CanonicalError>;
    type SerializeStruct = Impossible<(), CanonicalError>;
    type SerializeStructVariant = Impossible<(), CanonicalError>;

    key_text!(serialize_char: char, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64);

    fn serialize_str(self, v: &str) -> Result<(), CanonicalError> {
        self.keys.extend_from_slice(v.as_bytes());
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), CanonicalError> {
        self.keys.extend_from_slice(variant.as_bytes());
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        value.serialize(self)
    }
    fn serialize_bool(self, _v: bool) -> Result<(), CanonicalError> {
        Err(not_a_key("a boolean"))
    }
    fn serialize_f32(self, _v: f32) -> Result<(), CanonicalError> {
        Err(not_a_key("a float"))
    }
    fn serialize_f64(self, _v: f64) -> Result<(), CanonicalError> {
        Err(not_a_key("a float"))
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), CanonicalError> {
        Err(not_a_key("bytes"))
    }
    fn serialize_none(self) -> Result<(), CanonicalError> {
        Err(not_a_key("null"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _v: &T) -> Result<(), CanonicalError> {
        Err(not_a_key("an option"))
    }
    fn serialize_unit(self) -> Result<(), CanonicalError> {
        Err(not_a_key("null"))
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), CanonicalError> {
        Err(not_a_key("null"))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), CanonicalError> {
        Err(not_a_key("an enum variant with data"))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, CanonicalError> {
        Err(not_a_key("an array"))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, CanonicalError> {
        Err(not_a_key("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, CanonicalError> {
        Err(not_a_key("a tuple"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, CanonicalError> {
        Err(not_a_key("an enum variant with data"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, CanonicalError> {
        Err(not_a_key("an object"))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, CanonicalError> {
        Err(not_a_key("an object"))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, CanonicalError> {
        Err(not_a_key("an enum variant with data"))
    }
}

fn not_a_key(what: &str) -> CanonicalError {
    CanonicalError(format!(
        "an object key must be a string or an integer, not {what}"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::vault::record::canonical_json;

    fn same_as_value_path<T: Serialize>(v: &T) {
        let direct = to_vec(v).unwrap();
        let via_value = canonical_json(&serde_json::to_value(v).unwrap());
        assert_eq!(
            String::from_utf8_lossy(&direct),
            String::from_utf8_lossy(&via_value)
        );
    }

    #[test]
    fn nested_objects_arrays_and_escapes() {
        same_as_value_path(&json!({
            "z": 1, "a": [3, {"y": null, "b": "é\"\\\n\u{1}"}], "m": {"k2": true, "k1": -7},
            "": 0, "aa": 1.5, "big": u64::MAX
        }));
    }

    #[derive(Serialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Tagged {
        One { b: u8, a: Option<String> },
        Two(Inner),
    }

    #[derive(Serialize)]
    struct Inner {
        zed: Vec<u16>,
        #[serde(flatten)]
        more: Flat,
    }

    #[derive(Serialize)]
    struct Flat {
        alpha: char,
        e: External,
    }

    #[derive(Serialize)]
    enum External {
        Unit,
        New(i32),
        Tuple(i8, i8),
        Struct { y: u8, x: u8 },
    }

    #[derive(Serialize)]
    struct Outer {
        seq: u64,
        #[serde(flatten)]
        body: Tagged,
        list: Vec<External>,
        map: std::collections::HashMap<u32, &'static str>,
    }

    #[test]
    fn flatten_tags_and_every_enum_shape() {
        for body in [
            Tagged::One {
                b: 2,
                a: Some("x".into()),
            },
            Tagged::Two(Inner {
                zed: vec![3, 1],
                more: Flat {
                    alpha: 'q',
                    e: External::Struct { y: 1, x: 2 },
                },
            }),
        ] {
            same_as_value_path(&Outer {
                seq: 9,
                body,
                list: vec![
                    External::Unit,
                    External::New(-1),
                    External::Tuple(1, 2),
                    External::Struct { y: 0, x: 0 },
                ],
                map: [(10, "ten"), (2, "two")].into_iter().collect(),
            });
        }
    }

    #[test]
    fn every_ascii_byte_and_integer_edge_is_written_as_serde_json_writes_it() {
        let all: String = (0u8..=0x7f).map(char::from).collect();
        assert_eq!(to_vec(&all).unwrap(), serde_json::to_vec(&all).unwrap());
        let ints = (i64::MIN, i64::MAX, u64::MAX, 0u8, -1i8, i32::MIN, u16::MAX);
        assert_eq!(to_vec(&ints).unwrap(), serde_json::to_vec(&ints).unwrap());
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        #[derive(Serialize)]
        struct Twice {
            a: u8,
            #[serde(flatten)]
            inner: std::collections::BTreeMap<&'static str, u8>,
        }
        let v = Twice {
            a: 1,
            inner: [("a", 2), ("b", 3)].into_iter().collect(),
        };
        assert_eq!(to_vec(&v).unwrap(), br#"{"a":2,"b":3}"#);
        same_as_value_path(&v);
    }

    #[test]
    fn a_non_string_key_is_refused_with_the_reason() {
        let m: std::collections::BTreeMap<bool, u8> = [(true, 1)].into_iter().collect();
        let e = to_vec(&m).unwrap_err().to_string();
        assert!(e.contains("not a boolean"), "{e}");
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn equals_canonical_json_of_any_value(v in arb_value()) {
            prop_assert_eq!(to_vec(&v).unwrap(), canonical_json(&v));
        }

        /// Strings (every control byte, quotes, backslashes, non-ASCII) and chars are
        /// escaped byte for byte as serde_json escapes them.
        #[test]
        fn strings_escape_as_serde_json_does(s in "(?s).{0,64}", c in any::<char>()) {
            let mut out = Vec::new();
            write_str(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
            prop_assert_eq!(to_vec(&c).unwrap(), serde_json::to_vec(&c).unwrap());
        }

        /// The eight-byte test agrees with the byte test on any eight bytes.
        #[test]
        fn the_word_test_agrees_with_the_byte_test(w in any::<[u8; 8]>()) {
            let bytewise = w.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(needs_escape_swar(u64::from_le_bytes(w)), bytewise);
        }

        /// One encoder for many values: remembered shapes never leak into the next value.
        #[test]
        fn a_reused_encoder_equals_canonical_json(vs in prop::collection::vec(arb_value(), 1..12)) {
            let mut enc = Encoder::default();
            for v in vs.iter().chain(vs.iter().rev()) {
                prop_assert_eq!(enc.encode(v).unwrap(), &canonical_json(v)[..]);
            }
        }
    }

    /// The vault client spools these bytes where it spooled `to_vec(to_value(event))`.
    #[test]
    fn events_encode_as_their_value_tree_does() {
        use crate::event::{Body, Event, Exec, FileOp, Tamper};
        let tamper = Some(Tamper {
            kind: "log_deleted".into(),
            reason: "unlink \"x\"".into(),
        });
        let bodies = [
            Body::Delete(Box::new(FileOp {
                syscall: "unlinkat".into(),
                path: "/var/log/\u{e9}\n".into(),
                flags: vec!["AT_REMOVEDIR"],
                tamper: tamper.clone(),
                ..FileOp::default()
            })),
            Body::Exec(Box::new(Exec {
                argv: vec!["rm".into(), "-f".into()],
                tamper,
                warnings: vec!["argv_truncated"],
                ..Exec::default()
            })),
        ];
        let mut enc = Encoder::default();
        for (i, body) in bodies.into_iter().enumerate() {
            let ev = Event {
                schema_version: 1,
                seq: i as u64 + 1,
                time: "2026-11-23T00:00:00Z".into(),
                boot_ns: 5,
                body,
            };
            let tree = serde_json::to_vec(&serde_json::to_value(&ev).unwrap()).unwrap();
            assert_eq!(enc.encode(&ev).unwrap(), &tree[..]);
            same_as_value_path(&ev);
        }
    }

    #[test]
    fn same_keys_different_values_and_shapes_in_turn() {
        let mut enc = Encoder::default();
        for i in 0..40u64 {
            let v = if i % 3 == 0 {
                json!({"b": i, "a": {"y": i, "x": [i]}, "c": null})
            } else {
                json!({"b": i, "a": "s", "d": {"x": true}})
            };
            assert_eq!(enc.encode(&v).unwrap(), &canonical_json(&v)[..]);
        }
    }
}
