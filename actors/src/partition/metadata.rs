//! Every row's metadata in memory, compactly, so that filters run inside the scan.
//!
//! A million rows must fit next to their 1.5 GB of vectors in a 1.7 GB budget, so a row costs
//! a map entry and a few dozen bytes:
//!
//! * keys are interned once per partition and written as small integers;
//! * rows are encoded back to back in one arena (no allocation per row), compacted when half
//!   of it is garbage left by updates and deletes;
//! * numbers, booleans, null and short strings are kept whole, so filters on them are decided
//!   in memory;
//! * a string longer than [`INLINE_MAX`] bytes (a chunk's text, say) is kept as its 64-bit
//!   hash and a nested array or object as a mark only. A filter that asks for such a value
//!   gets [`Verdict::Check`] when it might match, and the partition reads the row from disk to
//!   decide. Results are read from disk too, so the full text never has to live in memory.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use arbor_kernels::topk::MemoryUsage;
use serde_json::{Map, Value};

use super::filter::MetadataFilter;

/// Strings up to this many bytes are kept in memory; longer ones as their hash.
pub const INLINE_MAX: usize = 48;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
/// A signed integer, zigzag varint.
const INT: u8 = 3;
/// An integer above `i64::MAX`, 8 bytes.
const UINT: u8 = 4;
/// Any other number, 8 bytes.
const FLOAT: u8 = 5;
/// A string of at most [`INLINE_MAX`] bytes: varint length, then the bytes.
const STR: u8 = 6;
/// A longer string: its 8-byte hash.
const LONG_STR: u8 = 7;
/// An array or an object: nothing else is kept.
const NESTED: u8 = 8;

/// Bits of a row's packed location that hold its length (metadata is at most 64 KiB of
/// JSON, and its encoding is never much longer); the rest hold its offset in the arena.
const LEN_BITS: u32 = 24;

/// Whether a row passes a filter, as far as memory can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    No,
    Yes,
    /// Only the row on disk can tell: a long string's hash or a nested value matched.
    Check,
}

impl Verdict {
    fn from_bool(b: bool) -> Self {
        if b { Verdict::Yes } else { Verdict::No }
    }
}

/// One stored value, borrowed from the arena.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stored<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    LongStr(u64),
    Nested,
}

/// Every row's metadata: interned keys, and rows encoded in one arena.
#[derive(Debug, Default)]
pub struct MetadataTable {
    /// id → `offset << LEN_BITS | len` in `arena`.
    rows: HashMap<u64, u64>,
    arena: Vec<u8>,
    /// Bytes of `arena` no row points to any more.
    garbage: usize,
    keys: Vec<Box<str>>,
    key_ids: HashMap<Box<str>, u32>,
    /// Reused while encoding one row.
    scratch: Vec<u8>,
}

impl MetadataTable {
    /// Makes room for `additional` more rows.
    pub fn reserve(&mut self, additional: usize) {
        self.rows.reserve(additional);
    }

    /// Stores (or replaces) a row's metadata.
    pub fn insert(&mut self, id: u64, map: &Map<String, Value>) {
        let mut fields: Vec<(u32, &Value)> = map.iter().map(|(k, v)| (self.key(k), v)).collect();
        fields.sort_by_key(|(k, _)| *k);
        self.scratch.clear();
        for (key, value) in fields {
            put_varint(&mut self.scratch, u64::from(key));
            encode_value(&mut self.scratch, value);
        }
        let len = self.scratch.len();
        // Metadata is at most 64 KiB of JSON; its encoding stays far below 16 MiB.
        debug_assert!(len < 1 << LEN_BITS);
        let offset = self.arena.len();
        self.arena.extend_from_slice(&self.scratch);
        let packed = ((offset as u64) << LEN_BITS) | len as u64;
        if let Some(old) = self.rows.insert(id, packed) {
            self.garbage += unpack(old).1;
        }
        self.compact_if_wasteful();
    }

    /// Forgets a row (absent ids are fine).
    pub fn remove(&mut self, id: u64) {
        if let Some(old) = self.rows.remove(&id) {
            self.garbage += unpack(old).1;
            self.compact_if_wasteful();
        }
    }

    /// Drops spare capacity once a load is done.
    pub fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
        self.scratch = Vec::new();
    }

    /// Bytes held: the map's table, the arena and the keys.
    pub fn bytes(&self) -> usize {
        let keys: usize = self.keys.iter().map(|k| 2 * k.len() + 48).sum();
        MemoryUsage::hash_map_bytes(self.rows.capacity(), 16)
            + self.arena.capacity()
            + keys
            + MemoryUsage::hash_map_bytes(self.key_ids.capacity(), 20)
    }

    /// Prepares `filter` for this table: keys become the table's numbers (a key no row has
    /// can match nothing) and long strings their hashes, once per search rather than per row.
    pub fn compile<'f>(&self, filter: &'f MetadataFilter) -> Compiled<'f> {
        let key = |k: &str| self.key_ids.get(k).copied();
        match filter {
            MetadataFilter::Equal { key: k, value } => Compiled::In {
                key: key(k),
                values: vec![Wanted::new(value)],
            },
            MetadataFilter::In { key: k, values } => Compiled::In {
                key: key(k),
                values: values.iter().map(Wanted::new).collect(),
            },
            MetadataFilter::Range {
                key: k,
                gte,
                gt,
                lte,
                lt,
            } => Compiled::Range {
                key: key(k),
                bounds: [*gte, *gt, *lte, *lt],
            },
            MetadataFilter::And { filters } => {
                Compiled::And(filters.iter().map(|f| self.compile(f)).collect())
            }
        }
    }

    /// Whether row `id` passes `filter` (`No` for a row the table does not have).
    pub fn verdict(&self, id: u64, filter: &Compiled<'_>) -> Verdict {
        match self.rows.get(&id) {
            Some(&packed) => {
                let (offset, len) = unpack(packed);
                judge(&self.arena[offset..offset + len], filter)
            }
            None => Verdict::No,
        }
    }

    fn key(&mut self, k: &str) -> u32 {
        if let Some(&id) = self.key_ids.get(k) {
            return id;
        }
        let id = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
        self.keys.push(k.into());
        self.key_ids.insert(k.into(), id);
        id
    }

    /// Rewrites the arena without its garbage once garbage is more than half of it (and
    /// worth the copy), so updates never grow memory without bound.
    fn compact_if_wasteful(&mut self) {
        if self.garbage < 1 << 20 || self.garbage * 2 < self.arena.len() {
            return;
        }
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for packed in self.rows.values_mut() {
            let (offset, len) = unpack(*packed);
            let new_offset = arena.len();
            arena.extend_from_slice(&self.arena[offset..offset + len]);
            *packed = ((new_offset as u64) << LEN_BITS) | len as u64;
        }
        self.arena = arena;
        self.garbage = 0;
    }
}

fn unpack(packed: u64) -> (usize, usize) {
    (
        (packed >> LEN_BITS) as usize,
        (packed & ((1 << LEN_BITS) - 1)) as usize,
    )
}

/// A value a filter asks for, with its hash when it is a long string.
#[derive(Debug)]
pub struct Wanted<'f> {
    value: &'f Value,
    long_hash: Option<u64>,
}

impl<'f> Wanted<'f> {
    fn new(value: &'f Value) -> Self {
        let long_hash = match value {
            Value::String(s) if s.len() > INLINE_MAX => Some(hash_str(s)),
            _ => None,
        };
        Wanted { value, long_hash }
    }
}

/// A filter prepared for one table (see [`MetadataTable::compile`]).
#[derive(Debug)]
pub enum Compiled<'f> {
    /// The value under `key` equals one of `values` (equal is `in` with one value).
    In {
        key: Option<u32>,
        values: Vec<Wanted<'f>>,
    },
    /// The number under `key` is within `[gte, gt, lte, lt]`.
    Range {
        key: Option<u32>,
        bounds: [Option<f64>; 4],
    },
    And(Vec<Compiled<'f>>),
}

fn judge(row: &[u8], filter: &Compiled<'_>) -> Verdict {
    match filter {
        Compiled::In { key, values } => {
            let Some(stored) = key.and_then(|k| find(row, k)) else {
                return Verdict::No;
            };
            let mut verdict = Verdict::No;
            for wanted in values {
                match equals(stored, wanted) {
                    Verdict::Yes => return Verdict::Yes,
                    Verdict::Check => verdict = Verdict::Check,
                    Verdict::No => {}
                }
            }
            verdict
        }
        Compiled::Range { key, bounds } => {
            let x = match key.and_then(|k| find(row, k)) {
                Some(Stored::Int(i)) => i as f64,
                Some(Stored::UInt(u)) => u as f64,
                Some(Stored::Float(f)) => f,
                _ => return Verdict::No,
            };
            let [gte, gt, lte, lt] = *bounds;
            Verdict::from_bool(
                gte.is_none_or(|b| x >= b)
                    && gt.is_none_or(|b| x > b)
                    && lte.is_none_or(|b| x <= b)
                    && lt.is_none_or(|b| x < b),
            )
        }
        Compiled::And(filters) => {
            let mut verdict = Verdict::Yes;
            for f in filters {
                match judge(row, f) {
                    Verdict::No => return Verdict::No,
                    Verdict::Check => verdict = Verdict::Check,
                    Verdict::Yes => {}
                }
            }
            verdict
        }
    }
}

/// Equality as [`MetadataFilter`] defines it (numbers by value), as far as memory can tell.
fn equals(stored: Stored<'_>, wanted: &Wanted<'_>) -> Verdict {
    match (stored, wanted.value) {
        (Stored::Null, Value::Null) => Verdict::Yes,
        (Stored::Bool(a), Value::Bool(b)) => Verdict::from_bool(a == *b),
        (Stored::Str(a), Value::String(b)) => Verdict::from_bool(a == b),
        (Stored::LongStr(h), Value::String(_)) => {
            if wanted.long_hash == Some(h) {
                Verdict::Check
            } else {
                Verdict::No
            }
        }
        (Stored::Nested, Value::Array(_) | Value::Object(_)) => Verdict::Check,
        (Stored::Int(i), Value::Number(n)) => Verdict::from_bool(match n.as_i64() {
            Some(j) => i == j,
            None => n.as_u64().is_none() && n.as_f64() == Some(i as f64),
        }),
        (Stored::UInt(u), Value::Number(n)) => Verdict::from_bool(match n.as_u64() {
            Some(v) => u == v,
            None => n.as_i64().is_none() && n.as_f64() == Some(u as f64),
        }),
        (Stored::Float(f), Value::Number(n)) => Verdict::from_bool(n.as_f64() == Some(f)),
        _ => Verdict::No,
    }
}

/// The value under key number `key` in an encoded row.
fn find(mut row: &[u8], key: u32) -> Option<Stored<'_>> {
    while !row.is_empty() {
        let k = take_varint(&mut row)?;
        let value = take_value(&mut row)?;
        match k.cmp(&u64::from(key)) {
            std::cmp::Ordering::Equal => return Some(value),
            // Fields are sorted by key number.
            std::cmp::Ordering::Greater => return None,
            std::cmp::Ordering::Less => {}
        }
    }
    None
}

fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push(INT);
                put_varint(out, ((i << 1) ^ (i >> 63)) as u64);
            } else if let Some(u) = n.as_u64() {
                out.push(UINT);
                out.extend_from_slice(&u.to_le_bytes());
            } else {
                out.push(FLOAT);
                out.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_le_bytes());
            }
        }
        Value::String(s) if s.len() <= INLINE_MAX => {
            out.push(STR);
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::String(s) => {
            out.push(LONG_STR);
            out.extend_from_slice(&hash_str(s).to_le_bytes());
        }
        Value::Array(_) | Value::Object(_) => out.push(NESTED),
    }
}

fn take_value<'a>(row: &mut &'a [u8]) -> Option<Stored<'a>> {
    let (&tag, rest) = row.split_first()?;
    *row = rest;
    Some(match tag {
        NULL => Stored::Null,
        FALSE => Stored::Bool(false),
        TRUE => Stored::Bool(true),
        INT => {
            let z = take_varint(row)?;
            Stored::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
        }
        UINT => Stored::UInt(u64::from_le_bytes(take_array(row)?)),
        FLOAT => Stored::Float(f64::from_le_bytes(take_array(row)?)),
        STR => {
            let len = usize::try_from(take_varint(row)?).ok()?;
            let bytes = row.get(..len)?;
            *row = &row[len..];
            // Written from a `str`, so always UTF-8.
            Stored::Str(std::str::from_utf8(bytes).ok()?)
        }
        LONG_STR => Stored::LongStr(u64::from_le_bytes(take_array(row)?)),
        NESTED => Stored::Nested,
        _ => return None,
    })
}

fn take_array<const N: usize>(row: &mut &[u8]) -> Option<[u8; N]> {
    let bytes: [u8; N] = row.get(..N)?.try_into().ok()?;
    *row = &row[N..];
    Some(bytes)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(row: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = row.split_first()?;
        *row = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// A long string's hash. Fixed keys: the table is rebuilt from disk at every start, so the
/// hash only has to agree within one process.
fn hash_str(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn table_with(rows: &[(u64, Value)]) -> MetadataTable {
        let mut t = MetadataTable::default();
        for (id, v) in rows {
            t.insert(*id, v.as_object().unwrap());
        }
        t
    }

    fn verdict(t: &MetadataTable, id: u64, filter: &str) -> Verdict {
        let f = MetadataFilter::parse(filter).unwrap();
        t.verdict(id, &t.compile(&f))
    }

    #[test]
    fn short_values_are_decided_in_memory_and_long_ones_checked() {
        let long = "x".repeat(INLINE_MAX + 1);
        let t = table_with(&[(
            1,
            json!({"lang": "en", "page": 4, "big": u64::MAX, "f": 0.5, "ok": true,
                   "none": null, "text": long, "tags": ["a"]}),
        )]);
        let v = |f: &str| verdict(&t, 1, f);
        assert_eq!(
            v(r#"{"op":"equal","key":"lang","value":"en"}"#),
            Verdict::Yes
        );
        assert_eq!(
            v(r#"{"op":"equal","key":"lang","value":"fr"}"#),
            Verdict::No
        );
        assert_eq!(
            v(r#"{"op":"equal","key":"page","value":4.0}"#),
            Verdict::Yes
        );
        assert_eq!(
            v(r#"{"op":"equal","key":"big","value":18446744073709551615}"#),
            Verdict::Yes
        );
        assert_eq!(v(r#"{"op":"equal","key":"f","value":0.5}"#), Verdict::Yes);
        assert_eq!(v(r#"{"op":"equal","key":"ok","value":true}"#), Verdict::Yes);
        assert_eq!(
            v(r#"{"op":"equal","key":"none","value":null}"#),
            Verdict::Yes
        );
        assert_eq!(
            v(r#"{"op":"equal","key":"missing","value":null}"#),
            Verdict::No
        );
        let same = format!(r#"{{"op":"equal","key":"text","value":"{long}"}}"#);
        assert_eq!(v(&same), Verdict::Check);
        let other = format!(r#"{{"op":"equal","key":"text","value":"{long}y"}}"#);
        assert_eq!(v(&other), Verdict::No);
        assert_eq!(v(r#"{"op":"equal","key":"text","value":"x"}"#), Verdict::No);
        assert_eq!(
            v(r#"{"op":"equal","key":"tags","value":["a"]}"#),
            Verdict::Check
        );
        assert_eq!(
            v(r#"{"op":"range","key":"page","gte":4,"lt":5}"#),
            Verdict::Yes
        );
        assert_eq!(v(r#"{"op":"range","key":"lang","lt":5}"#), Verdict::No);
        let and = format!(
            r#"{{"op":"and","filters":[{{"op":"equal","key":"lang","value":"en"}},{same}]}}"#
        );
        assert_eq!(v(&and), Verdict::Check);
        assert_eq!(verdict(&t, 2, r#"{"op":"and","filters":[]}"#), Verdict::No);
    }

    #[test]
    fn updates_and_deletes_compact_the_arena() {
        let mut t = MetadataTable::default();
        let row = json!({"doc": "d".repeat(40), "n": 1});
        for round in 0..200u64 {
            for id in 0..1000u64 {
                t.insert(id, row.as_object().unwrap());
            }
            if round % 2 == 0 {
                for id in 0..500u64 {
                    t.remove(id);
                }
            }
        }
        // 1000 live rows of about 50 bytes: the garbage of 200 rewrites is gone.
        assert!(t.arena.len() < 4 << 20, "arena {} bytes", t.arena.len());
        assert_eq!(
            verdict(&t, 7, r#"{"op":"equal","key":"n","value":1}"#),
            Verdict::Yes
        );
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            (0i64..4).prop_map(Value::from),
            (0i64..4).prop_map(|i| Value::from(i as f64)),
            "[a-c]{0,3}".prop_map(Value::from),
            "[a-c]{47,50}".prop_map(Value::from),
            prop::collection::vec(0i64..3, 0..2).prop_map(|v| json!(v)),
        ]
    }

    proptest! {
        /// Memory never says no to a row the full filter accepts, never says yes to one it
        /// refuses, and says `Check` only for values it does not keep whole.
        #[test]
        fn memory_agrees_with_the_full_filter(
            row in prop::collection::btree_map("[a-d]", scalar(), 0..4),
            key in "[a-e]",
            wanted in prop::collection::vec(scalar(), 1..3),
            lo in -5f64..5.0,
        ) {
            let map: Map<String, Value> = row.into_iter().collect();
            let t = table_with(&[(9, Value::Object(map.clone()))]);
            let filters = [
                MetadataFilter::Equal { key: key.clone(), value: wanted[0].clone() },
                MetadataFilter::In { key: key.clone(), values: wanted.clone() },
                MetadataFilter::Range { key: key.clone(), gte: Some(lo), gt: None, lte: None, lt: Some(lo + 3.0) },
            ];
            for f in &filters {
                let full = f.matches(&map);
                match t.verdict(9, &t.compile(f)) {
                    Verdict::Yes => prop_assert!(full, "{f:?} on {map:?}"),
                    Verdict::No => prop_assert!(!full, "{f:?} on {map:?}"),
                    Verdict::Check => {}
                }
            }
        }
    }
}
