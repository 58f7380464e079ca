//! `capa_native`: capa's decoder of canonical Avro change events (`change_event.v1`).
//!
//! * `decode_event(data, start=0) -> ChangeEvent` decodes one schemaless body (from
//!   `data[start:]`) into a `capa.events.ChangeEvent`, or raises `capa.errors.DecodeError`
//!   ("not a canonical Avro change event: <why>"): every single-event decode in capa
//!   (dead letters, replay, fallback records, Confluent framing) goes through it.
//! * `decode_batch(values, fingerprint) -> (tables, fallback)` decodes a batch of Kafka
//!   values (Avro single-object framing + body) straight into per-table columns, for the
//!   tables whose every record is a *plain* change (see `capa/columnar.py`); everything else
//!   is returned as `fallback` indices, which the caller decodes event by event.
//!
//! Both share one reader (`parse`): each record is first parsed into borrowed Rust values
//! (`Head` + `Scratch`); a batch appends a fully parsed, eligible record to its table's
//! columns (Python objects) and drops the columns of a table that turns out ineligible.
//! In a batch, bad input never raises and a panic never crosses into Python: both give
//! fallback. Row values are built here (typed ones in `typed.rs`).
//! `tests/oracles/avro_reader.py` (pure Python) and `tests/oracles/fastavro_codec.py` are the
//! reference decoders the tests compare this one with.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use std::borrow::Cow;

use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyList, PyString, PyTuple};

mod typed;
use typed::Types;

const MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER: usize = 10; // magic + 8-byte fingerprint
const OP_TRUNCATE: u8 = 4;
const OP_DELETE: u8 = 3;
const OP_UPDATE: u8 = 2;
const BRANCH_DOUBLE: u8 = 6;
const BRANCH_ARRAY: u8 = 26;

/// Why a record is not decoded.
pub(crate) enum Fail {
    /// Malformed, or a value's Python constructor raised an `Exception`: the reason (a
    /// `DecodeError` from `decode_event`; the record falls back in `decode_batch`).
    Corrupt(Cow<'static, str>),
    /// Python raised a non-`Exception` (KeyboardInterrupt, SystemExit): re-raised.
    Fatal(PyErr),
}

pub(crate) type R<T> = Result<T, Fail>;

const fn corrupt(why: &'static str) -> Fail {
    Fail::Corrupt(Cow::Borrowed(why))
}

fn owned(why: String) -> Fail {
    Fail::Corrupt(Cow::Owned(why))
}

const END: Fail = corrupt("the record ends before its last field");

/// A Python error from a value's constructor: an `Exception` makes the record corrupt
/// (`"TypeName: message"`, as Python prints it), anything else is re-raised.
pub(crate) fn caught(py: Python<'_>, err: PyErr) -> Fail {
    if !err.is_instance_of::<PyException>(py) {
        return Fail::Fatal(err);
    }
    let name = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let text = err
        .value(py)
        .str()
        .map(|t| t.to_string())
        .unwrap_or_default();
    owned(format!("{name}: {text}"))
}

// --- reading -------------------------------------------------------------------------

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline(always)]
    fn byte(&mut self) -> R<u8> {
        let b = *self.data.get(self.pos).ok_or(END)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline(always)]
    fn peek(&self) -> R<u8> {
        self.data.get(self.pos).copied().ok_or(END)
    }

    /// Zig-zag varint: at most 10 bytes; a value past the i64 range is an error.
    #[inline(always)]
    fn long(&mut self) -> R<i64> {
        let b = self.byte()?;
        if b < 0x80 {
            return Ok(((b >> 1) as i64) ^ -((b & 1) as i64));
        }
        self.long_slow(b)
    }

    #[inline(never)]
    fn long_slow(&mut self, first: u8) -> R<i64> {
        let mut n = (first & 0x7F) as u64;
        let mut shift = 7u32;
        loop {
            let b = self.byte()?;
            if shift == 63 {
                // 10th byte: a continuation bit is an error in Python too; bits past 64 overflow
                if b > 1 {
                    return Err(corrupt("varint past the 64-bit range of Avro long"));
                }
                n |= (b as u64) << 63;
                break;
            }
            n |= ((b & 0x7F) as u64) << shift;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    #[inline(always)]
    fn raw(&mut self) -> R<&'a [u8]> {
        let size = self.long()?;
        if size < 0 {
            return Err(owned(format!("negative length {size}")));
        }
        let end = self.pos.checked_add(size as usize).ok_or(END)?;
        let out = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| owned(format!("length {size} runs past the end of the record")))?;
        self.pos = end;
        Ok(out)
    }

    /// Length-prefixed strict UTF-8 (Python's `bytes.decode()` accepts exactly the same).
    #[inline(always)]
    fn text(&mut self) -> R<&'a str> {
        let raw = self.raw()?;
        std::str::from_utf8(raw).map_err(|e| owned(format!("a string is not UTF-8: {e}")))
    }

    /// Item count of the next array/map block; a negative count is followed by a byte size.
    #[inline(always)]
    fn block_count(&mut self) -> R<u64> {
        let count = self.long()?;
        if count < 0 {
            self.long()?;
        }
        Ok(count.unsigned_abs())
    }

    fn opt_text(&mut self) -> R<Option<&'a str>> {
        match self.byte()? {
            0 => Ok(None),
            2 => Ok(Some(self.text()?)),
            b => Err(owned(format!("optional string union branch byte {b}"))),
        }
    }

    fn enumeration(&mut self, symbols: i64, what: &str) -> R<u8> {
        let index = self.long()?;
        if (0..symbols).contains(&index) {
            Ok(index as u8)
        } else {
            Err(owned(format!("{what} enum index {index}")))
        }
    }
}

/// One decoded row value (`change_event.v1` row-value union).
enum Val<'a, 'py> {
    Null,
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    /// Decimal, timestamps, date, time, uuid, json (`typed`) and arrays (a tuple).
    Obj(Bound<'py, PyAny>),
}

/// One map entry: its name, its encoded value (branch byte + payload) and the value.
struct Entry<'a, 'py> {
    name: &'a str,
    raw: &'a [u8],
    val: Val<'a, 'py>,
}

/// Per-call context: the classes of the typed values.
struct Ctx<'a, 'py> {
    types: &'a Types<'py>,
}

fn value<'a, 'py>(r: &mut Reader<'a>, ctx: &Ctx<'a, 'py>) -> R<Val<'a, 'py>> {
    let branch = r.byte()?;
    let types = ctx.types;
    Ok(match branch {
        8 => Val::Str(r.text()?),
        4 => Val::Long(r.long()?),
        0 => Val::Null,
        6 => {
            let end = r.pos + 8;
            let raw = r
                .data
                .get(r.pos..end)
                .ok_or(corrupt("double runs past the end of the record"))?;
            r.pos = end;
            Val::Double(f64::from_le_bytes(raw.try_into().map_err(|_| END)?))
        }
        2 => {
            let flag = r.byte()?;
            if flag > 1 {
                return Err(owned(format!("boolean byte {flag}")));
            }
            Val::Bool(flag == 1)
        }
        10 => Val::Bytes(r.raw()?),
        12 => {
            let unscaled = r.raw()?;
            let scale = r.long()?;
            Val::Obj(types.decimal(unscaled, scale)?)
        }
        14 | 16 => Val::Obj(types.timestamp(r.long()?, branch == 16)?),
        18 => Val::Obj(types.date(r.long()?)?),
        20 => Val::Obj(types.time(r.long()?)?),
        22 => Val::Obj(types.uuid(r.text()?)?),
        24 => Val::Obj(types.json(r.text()?)?),
        BRANCH_ARRAY => {
            let py = types.py();
            let mut items = Vec::new();
            array(r, &mut items, |r| Ok(to_py(py, &value(r, ctx)?)))?;
            Val::Obj(
                PyTuple::new(py, items)
                    .map_err(|err| caught(py, err))?
                    .into_any(),
            )
        }
        _ => {
            return Err(owned(format!(
                "row value union branch byte {branch} is not in change_event.v1"
            )))
        }
    })
}

/// An Avro map of row values (blocks until a zero count), appended to `out`.
fn row<'a, 'py>(r: &mut Reader<'a>, ctx: &Ctx<'a, 'py>, out: &mut Vec<Entry<'a, 'py>>) -> R<()> {
    loop {
        let count = r.block_count()?;
        if count == 0 {
            return Ok(());
        }
        for _ in 0..count {
            let name = r.text()?;
            let start = r.pos;
            let val = value(r, ctx)?;
            out.push(Entry {
                name,
                raw: &r.data[start..r.pos],
                val,
            });
        }
    }
}

/// `["null", map]`: false for null.
fn opt_row<'a, 'py>(
    r: &mut Reader<'a>,
    ctx: &Ctx<'a, 'py>,
    out: &mut Vec<Entry<'a, 'py>>,
) -> R<bool> {
    match r.byte()? {
        0 => Ok(false),
        2 => row(r, ctx, out).map(|_| true),
        b => Err(owned(format!("row image union branch byte {b}"))),
    }
}

/// An Avro array (blocks of items until a zero count): its encoded section; items go to `out`.
fn array<'a, T>(
    r: &mut Reader<'a>,
    out: &mut Vec<T>,
    mut item: impl FnMut(&mut Reader<'a>) -> R<T>,
) -> R<&'a [u8]> {
    let start = r.pos;
    if r.peek()? == 0 {
        r.pos += 1;
    } else {
        loop {
            let count = r.block_count()?;
            if count == 0 {
                break;
            }
            for _ in 0..count {
                out.push(item(r)?);
            }
        }
    }
    Ok(&r.data[start..r.pos])
}

/// An array of strings.
fn texts<'a>(r: &mut Reader<'a>, out: &mut Vec<&'a str>) -> R<&'a [u8]> {
    array(r, out, |r| r.text())
}

/// The columns array (records of name, source_type).
fn columns<'a>(r: &mut Reader<'a>, out: &mut Vec<(&'a str, &'a str)>) -> R<&'a [u8]> {
    array(r, out, |r| {
        let name = r.text()?;
        Ok((name, r.text()?))
    })
}

/// The scalar fields of one record.
struct Head<'a> {
    event_id: &'a str,
    source: &'a str,
    kind: u8,
    origin: &'a str,
    transaction_id: Option<&'a str>,
    database: Option<&'a str>,
    schema: &'a str,
    table: &'a str,
    op: u8,
    position: &'a str,
    commit_ts_us: Option<i64>,
    pk_section: &'a [u8],
    columns_section: &'a [u8],
    unchanged: bool,
}

/// The variable-length parts of one record (reused from record to record).
#[derive(Default)]
struct Scratch<'a, 'py> {
    pk: Vec<&'a str>,
    columns: Vec<(&'a str, &'a str)>,
    key: Vec<Entry<'a, 'py>>,
    before: Vec<Entry<'a, 'py>>,
    after: Vec<Entry<'a, 'py>>,
    has_before: bool,
    has_after: bool,
    unchanged: Vec<&'a str>,
}

impl Scratch<'_, '_> {
    fn clear(&mut self) {
        self.pk.clear();
        self.columns.clear();
        self.key.clear();
        self.before.clear();
        self.after.clear();
        self.unchanged.clear();
        self.has_before = false;
        self.has_after = false;
    }
}

type Triple<'a> = (&'a str, &'a str, &'a str);

/// Parses one body (from `start` to the end of `data`). `triple` is set as soon as
/// (source, schema, table) is read, so a later failure can be charged to its table. Bytes
/// left after the record are an error: a reader that ignored them would accept a record
/// written with another schema.
fn parse<'a, 'py>(
    data: &'a [u8],
    start: usize,
    ctx: &Ctx<'a, 'py>,
    s: &mut Scratch<'a, 'py>,
    triple: &mut Option<Triple<'a>>,
) -> R<Head<'a>> {
    s.clear();
    let mut r = Reader { data, pos: start };
    let version = r.long()?;
    if version != 1 {
        return Err(owned(format!("schema_version {version}, expected 1")));
    }
    let event_id = r.text()?;
    let source = r.text()?;
    let kind = r.enumeration(3, "source_kind")?;
    let origin = r.text()?;
    let database = r.opt_text()?;
    let schema = r.text()?;
    let table = r.text()?;
    *triple = Some((source, schema, table));
    let op = r.enumeration(5, "op")?;
    let position = r.text()?;
    let commit_ts_us = match r.byte()? {
        0 => None,
        2 => Some(r.long()?),
        b => return Err(owned(format!("commit_ts_us union branch byte {b}"))),
    };
    let transaction_id = r.opt_text()?;
    let pk_section = texts(&mut r, &mut s.pk)?;
    let columns_section = columns(&mut r, &mut s.columns)?;
    row(&mut r, ctx, &mut s.key)?;
    s.has_before = opt_row(&mut r, ctx, &mut s.before)?;
    s.has_after = opt_row(&mut r, ctx, &mut s.after)?;
    texts(&mut r, &mut s.unchanged)?;
    if r.pos != data.len() {
        return Err(owned(format!(
            "{} bytes left after the record",
            data.len() - r.pos
        )));
    }
    Ok(Head {
        event_id,
        source,
        kind,
        origin,
        transaction_id,
        database,
        schema,
        table,
        op,
        position,
        commit_ts_us,
        pk_section,
        columns_section,
        unchanged: !s.unchanged.is_empty(),
    })
}

// --- eligibility -----------------------------------------------------------------------

/// The value of `name` in a map image (the last entry wins, as in a Python dict).
fn lookup<'e, 'a, 'py>(entries: &'e [Entry<'a, 'py>], name: &str) -> Option<&'e Entry<'a, 'py>> {
    entries.iter().rev().find(|e| e.name == name)
}

/// Same value: byte-identical encoding; doubles compare as f64 (NaN never equal, 0.0 ==
/// -0.0); arrays must also be equal as Python objects (an array holding NaN never is).
fn same(a: &Entry, b: &Entry) -> bool {
    match (&a.val, &b.val) {
        (Val::Double(x), Val::Double(y)) => x == y,
        (Val::Obj(x), Val::Obj(y)) if a.raw[0] == BRANCH_ARRAY => {
            a.raw == b.raw && x.eq(y).unwrap_or(false)
        }
        _ => a.raw == b.raw && a.raw[0] != BRANCH_DOUBLE,
    }
}

/// Every key entry is in `image` with the same value.
fn holds_key(image: &[Entry], key: &[Entry]) -> bool {
    key.iter()
        .all(|k| lookup(image, k.name).is_some_and(|v| same(k, v)))
}

/// The record-level rules (the table-level ones are checked by `Table::accepts`).
fn plain(head: &Head, s: &Scratch) -> bool {
    if head.event_id.is_empty() || head.op == OP_TRUNCATE || head.unchanged || s.pk.is_empty() {
        return false;
    }
    // key names are exactly the primary-key names, each once
    let key = &s.key;
    if key.len() != s.pk.len() {
        return false;
    }
    for (i, entry) in key.iter().enumerate() {
        if !s.pk.contains(&entry.name) || key[..i].iter().any(|e| e.name == entry.name) {
            return false;
        }
    }
    let before = s.has_before && !s.before.is_empty();
    if head.op == OP_DELETE {
        return !before || holds_key(&s.before, key);
    }
    if !s.has_after || s.after.is_empty() || !holds_key(&s.after, key) {
        return false;
    }
    // an update whose before holds the whole key must hold the same key (no key move)
    !(head.op == OP_UPDATE
        && before
        && key.iter().all(|k| lookup(&s.before, k.name).is_some())
        && !holds_key(&s.before, key))
}

// --- tables ------------------------------------------------------------------------------

struct Col<'a, 'py> {
    name: &'a str,
    py_name: Bound<'py, PyString>,
    vals: Vec<Bound<'py, PyAny>>,
}

struct Table<'a, 'py> {
    triple: Triple<'a>,
    first: Option<TableHead<'a>>,
    eligible: bool,
    indices: Vec<usize>,
    event_ids: Vec<Bound<'py, PyAny>>,
    positions: Vec<Bound<'py, PyAny>>,
    ops: Vec<Bound<'py, PyAny>>,
    commit_ts_us: Vec<Bound<'py, PyAny>>,
    cols: Vec<Col<'a, 'py>>,
}

/// What every record of a table must share with its first record.
struct TableHead<'a> {
    kind: u8,
    database: Option<&'a str>,
    pk_section: &'a [u8],
    columns_section: &'a [u8],
    pk: Vec<&'a str>,
    columns: Vec<(&'a str, &'a str)>,
}

impl<'a, 'py> Table<'a, 'py> {
    fn new(triple: Triple<'a>) -> Self {
        Table {
            triple,
            first: None,
            eligible: true,
            indices: Vec::new(),
            event_ids: Vec::new(),
            positions: Vec::new(),
            ops: Vec::new(),
            commit_ts_us: Vec::new(),
            cols: Vec::new(),
        }
    }

    fn disable(&mut self) {
        self.eligible = false;
        self.event_ids = Vec::new();
        self.positions = Vec::new();
        self.ops = Vec::new();
        self.commit_ts_us = Vec::new();
        self.cols = Vec::new();
    }

    /// The table-level rules: same kind, database, primary-key and columns sections.
    fn accepts(&mut self, head: &Head<'a>, s: &Scratch<'a, 'py>) -> bool {
        let first = self.first.get_or_insert_with(|| TableHead {
            kind: head.kind,
            database: head.database,
            pk_section: head.pk_section,
            columns_section: head.columns_section,
            pk: s.pk.clone(),
            columns: s.columns.clone(),
        });
        first.kind == head.kind
            && first.database == head.database
            && first.pk_section == head.pk_section
            && first.columns_section == head.columns_section
    }

    fn column(&mut self, py: Python<'py>, name: &'a str, hint: usize, rows: usize) -> usize {
        if self.cols.get(hint).is_some_and(|c| c.name == name) {
            return hint;
        }
        if let Some(found) = self.cols.iter().position(|c| c.name == name) {
            return found;
        }
        let none = py.None().into_bound(py);
        self.cols.push(Col {
            name,
            py_name: PyString::new(py, name),
            vals: vec![none; rows],
        });
        self.cols.len() - 1
    }

    fn append(
        &mut self,
        py: Python<'py>,
        ops: &[Bound<'py, PyAny>],
        index: usize,
        head: &Head<'a>,
        s: &Scratch<'a, 'py>,
    ) {
        let rows = self.event_ids.len();
        let image: &[Entry<'a, 'py>] = if head.op == OP_DELETE {
            if s.has_before && !s.before.is_empty() {
                &s.before
            } else {
                &s.key
            }
        } else {
            &s.after
        };
        for (hint, entry) in image.iter().enumerate() {
            let c = self.column(py, entry.name, hint, rows);
            let vals = &mut self.cols[c].vals;
            let v = to_py(py, &entry.val);
            if vals.len() == rows + 1 {
                vals[rows] = v; // a repeated name: the last value wins
            } else {
                let none = py.None().into_bound(py);
                vals.resize(rows, none);
                vals.push(v);
            }
        }
        self.indices.push(index);
        self.event_ids
            .push(PyString::new(py, head.event_id).into_any());
        self.positions
            .push(PyString::new(py, head.position).into_any());
        self.ops.push(ops[head.op as usize].clone());
        self.commit_ts_us.push(match head.commit_ts_us {
            Some(ts) => ts
                .into_pyobject(py)
                .map(|v| v.into_any())
                .unwrap_or_else(|e| match e {}),
            None => py.None().into_bound(py),
        });
    }

    fn into_py(mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let first = self
            .first
            .take()
            .ok_or_else(|| PyException::new_err("table without records"))?;
        let (source, schema, table) = self.triple;
        let rows = self.event_ids.len();
        let none = py.None().into_bound(py);
        let images = PyDict::new(py);
        for mut col in std::mem::take(&mut self.cols) {
            col.vals.resize(rows, none.clone());
            images.set_item(col.py_name, PyList::new(py, col.vals)?)?;
        }
        let pk = PyTuple::new(py, first.pk.iter().map(|n| PyString::new(py, n)))?;
        let mut columns = Vec::with_capacity(first.columns.len());
        for (name, source_type) in &first.columns {
            columns.push(PyTuple::new(
                py,
                [PyString::new(py, name), PyString::new(py, source_type)],
            )?);
        }
        let database = match first.database {
            Some(db) => PyString::new(py, db).into_any(),
            None => none.clone(),
        };
        let items: Vec<Bound<'py, PyAny>> = vec![
            PyString::new(py, source).into_any(),
            first
                .kind
                .into_pyobject(py)
                .map(|v| v.into_any())
                .unwrap_or_else(|e| match e {}),
            database,
            PyString::new(py, schema).into_any(),
            PyString::new(py, table).into_any(),
            pk.into_any(),
            PyTuple::new(py, columns)?.into_any(),
            PyList::new(py, &self.indices)?.into_any(),
            PyList::new(py, self.event_ids)?.into_any(),
            PyList::new(py, self.positions)?.into_any(),
            PyList::new(py, self.ops)?.into_any(),
            PyList::new(py, self.commit_ts_us)?.into_any(),
            images.into_any(),
        ];
        PyTuple::new(py, items)
    }
}

fn to_py<'py>(py: Python<'py>, val: &Val<'_, 'py>) -> Bound<'py, PyAny> {
    match val {
        Val::Null => py.None().into_bound(py),
        Val::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Val::Long(n) => n
            .into_pyobject(py)
            .map(|v| v.into_any())
            .unwrap_or_else(|e| match e {}),
        Val::Double(f) => PyFloat::new(py, *f).into_any(),
        Val::Str(s) => PyString::new(py, s).into_any(),
        Val::Bytes(b) => PyBytes::new(py, b).into_any(),
        Val::Obj(obj) => obj.clone(),
    }
}

// --- the batch ----------------------------------------------------------------------------

/// FxHash (rustc's): table lookups hash three short strings per record.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
        }
        for &b in chunks.remainder() {
            self.add(b as u64);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Fx {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

struct Batch<'a, 'py> {
    py: Python<'py>,
    tables: Vec<Table<'a, 'py>>,
    by_triple: HashMap<Triple<'a>, usize, BuildHasherDefault<Fx>>,
    last: Option<usize>,
    fallback: Vec<usize>,
    ops: Vec<Bound<'py, PyAny>>,
}

impl<'a, 'py> Batch<'a, 'py> {
    fn table(&mut self, triple: Triple<'a>) -> usize {
        if let Some(last) = self.last {
            if self.tables[last].triple == triple {
                return last;
            }
        }
        let n = self.tables.len();
        let index = *self.by_triple.entry(triple).or_insert(n);
        if index == n {
            self.tables.push(Table::new(triple));
        }
        self.last = Some(index);
        index
    }

    fn record(
        &mut self,
        index: usize,
        msg: &'a Bound<'py, PyAny>,
        fingerprint: &[u8],
        types: &'a Types<'py>,
        scratch: &mut Scratch<'a, 'py>,
    ) -> PyResult<()> {
        let data: &'a [u8] = match msg.cast::<PyBytes>() {
            Ok(bytes) => bytes.as_bytes(),
            Err(_) => {
                self.fallback.push(index); // None (tombstone) or not bytes
                return Ok(());
            }
        };
        if data.len() < HEADER || data[..2] != MAGIC || &data[2..HEADER] != fingerprint {
            self.fallback.push(index);
            return Ok(());
        }
        let ctx = Ctx { types };
        let mut triple = None;
        let parsed = catch_unwind(AssertUnwindSafe(|| {
            parse(data, HEADER, &ctx, scratch, &mut triple)
        }));
        let head = match parsed {
            Ok(Ok(head)) => head,
            Ok(Err(Fail::Fatal(err))) => return Err(err),
            Ok(Err(Fail::Corrupt(_))) | Err(_) => {
                self.fallback.push(index);
                if let Some(triple) = triple {
                    let t = self.table(triple);
                    self.tables[t].disable();
                }
                return Ok(());
            }
        };
        let t = self.table((head.source, head.schema, head.table));
        let py = self.py;
        let ops = &self.ops;
        let table = &mut self.tables[t];
        if !table.eligible {
            table.indices.push(index);
            return Ok(());
        }
        let appended = catch_unwind(AssertUnwindSafe(|| {
            if table.accepts(&head, scratch) && plain(&head, scratch) {
                table.append(py, ops, index, &head, scratch);
                true
            } else {
                false
            }
        }));
        if !matches!(appended, Ok(true)) {
            table.disable();
            table.indices.push(index);
        }
        Ok(())
    }

    fn finish(mut self) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let py = self.py;
        let mut out = Vec::new();
        for table in std::mem::take(&mut self.tables) {
            if table.eligible {
                out.push(table.into_py(py)?);
            } else {
                self.fallback.extend_from_slice(&table.indices);
            }
        }
        self.fallback.sort_unstable();
        Ok((PyList::new(py, out)?, PyList::new(py, &self.fallback)?))
    }
}

fn decode<'py>(
    py: Python<'py>,
    items: &[Bound<'py, PyAny>],
    fingerprint: &[u8],
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    let ops = ["r", "c", "u", "d", "t"]
        .iter()
        .map(|op| PyString::intern(py, op).into_any())
        .collect();
    let types = Types::new(py)?;
    let mut batch = Batch {
        py,
        tables: Vec::new(),
        by_triple: HashMap::default(),
        last: None,
        fallback: Vec::new(),
        ops,
    };
    let mut scratch = Scratch::default();
    for (index, msg) in items.iter().enumerate() {
        batch.record(index, msg, fingerprint, &types, &mut scratch)?;
    }
    drop(scratch);
    batch.finish()
}

/// decode_batch(values, fingerprint) -> (tables, fallback)
///
/// See `capa/native.py` for the contract.
#[pyfunction]
fn decode_batch<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    fingerprint: &[u8],
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    if fingerprint.len() != 8 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "fingerprint must be 8 bytes, got {}",
            fingerprint.len()
        )));
    }
    let items: Vec<Bound<'py, PyAny>> = match values.cast::<PyList>() {
        Ok(list) => list.iter().collect(),
        Err(_) => values.try_iter()?.collect::<PyResult<_>>()?,
    };
    match catch_unwind(AssertUnwindSafe(|| decode(py, &items, fingerprint))) {
        Ok(result) => result,
        // a bug: never let the panic reach Python; the whole batch takes the event path
        Err(_) => Ok((PyList::empty(py), PyList::new(py, 0..items.len())?)),
    }
}

// --- one event ------------------------------------------------------------------------------

/// The Python classes of a decoded event (imported once per process).
struct EventClasses {
    event: Py<PyAny>,
    row: Py<PyAny>,
    column: Py<PyAny>,
    kinds: Vec<Py<PyAny>>,
    ops: Vec<Py<PyAny>>,
    error: Py<PyAny>,
}

static EVENT_CLASSES: PyOnceLock<EventClasses> = PyOnceLock::new();

fn event_classes(py: Python<'_>) -> PyResult<&EventClasses> {
    EVENT_CLASSES.get_or_try_init(py, || -> PyResult<EventClasses> {
        let events = py.import("capa.events")?;
        let kind = events.getattr("SourceKind")?;
        let op = events.getattr("Op")?;
        let members = |class: &Bound<'_, PyAny>, values: &[&str]| -> PyResult<Vec<Py<PyAny>>> {
            values
                .iter()
                .map(|v| Ok(class.call1((*v,))?.unbind()))
                .collect()
        };
        Ok(EventClasses {
            event: events.getattr("ChangeEvent")?.unbind(),
            row: events.getattr("FrozenRow")?.unbind(),
            column: events.getattr("Column")?.unbind(),
            kinds: members(&kind, &["postgres", "sqlserver", "crm"])?,
            ops: members(&op, &["r", "c", "u", "d", "t"])?,
            error: py.import("capa.errors")?.getattr("DecodeError")?.unbind(),
        })
    })
}

/// A map image as a `FrozenRow` (filled through the dict C API: a repeated name, the last
/// value wins, as in the Python dict it replaces).
fn frozen_row<'py>(
    py: Python<'py>,
    c: &EventClasses,
    entries: &[Entry<'_, 'py>],
) -> PyResult<Bound<'py, PyAny>> {
    let row = c.row.bind(py).call0()?;
    let dict = row.cast::<PyDict>()?;
    for entry in entries {
        dict.set_item(PyString::new(py, entry.name), to_py(py, &entry.val))?;
    }
    Ok(row)
}

fn opt_str<'py>(py: Python<'py>, text: Option<&str>) -> Bound<'py, PyAny> {
    match text {
        Some(t) => PyString::new(py, t).into_any(),
        None => py.None().into_bound(py),
    }
}

fn build_event<'py>(
    py: Python<'py>,
    c: &EventClasses,
    head: &Head,
    s: &Scratch<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let strings = |items: &[&str]| PyTuple::new(py, items.iter().map(|n| PyString::new(py, n)));
    let mut columns = Vec::with_capacity(s.columns.len());
    for (name, source_type) in &s.columns {
        columns.push(c.column.bind(py).call1((*name, *source_type))?);
    }
    let none = || py.None().into_bound(py);
    let args: Vec<Bound<'py, PyAny>> = vec![
        PyString::new(py, head.source).into_any(),
        c.kinds[head.kind as usize].bind(py).clone(),
        opt_str(py, head.database),
        PyString::new(py, head.schema).into_any(),
        PyString::new(py, head.table).into_any(),
        c.ops[head.op as usize].bind(py).clone(),
        PyString::new(py, head.position).into_any(),
        match head.commit_ts_us {
            Some(ts) => ts.into_pyobject(py)?.into_any(),
            None => none(),
        },
        strings(&s.pk)?.into_any(),
        frozen_row(py, c, &s.key)?,
        if s.has_before {
            frozen_row(py, c, &s.before)?
        } else {
            none()
        },
        if s.has_after {
            frozen_row(py, c, &s.after)?
        } else {
            none()
        },
        PyTuple::new(py, columns)?.into_any(),
        strings(&s.unchanged)?.into_any(),
        opt_str(py, head.transaction_id),
        PyString::new(py, head.origin).into_any(),
        PyString::new(py, head.event_id).into_any(),
    ];
    c.event.bind(py).call1(PyTuple::new(py, args)?)
}

/// decode_event(data, start=0) -> ChangeEvent
///
/// The schemaless `change_event.v1` body `data[start:]` as a `capa.events.ChangeEvent`.
/// Raises `capa.errors.DecodeError("not a canonical Avro change event: <why>")` for any
/// malformed body (bytes left after the record included); a non-`Exception` raised while
/// building a value (KeyboardInterrupt) propagates.
#[pyfunction]
#[pyo3(signature = (data, start=0))]
fn decode_event<'py>(py: Python<'py>, data: &[u8], start: usize) -> PyResult<Bound<'py, PyAny>> {
    let c = event_classes(py)?;
    let types = Types::new(py)?;
    let ctx = Ctx { types: &types };
    let mut scratch = Scratch::default();
    let mut triple = None;
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        if start > data.len() {
            return Err(END);
        }
        parse(data, start, &ctx, &mut scratch, &mut triple)
    }));
    let why = match parsed {
        Ok(Ok(head)) => match build_event(py, c, &head, &scratch) {
            Ok(event) => return Ok(event),
            Err(err) => match caught(py, err) {
                Fail::Fatal(err) => return Err(err),
                Fail::Corrupt(why) => why,
            },
        },
        Ok(Err(Fail::Fatal(err))) => return Err(err),
        Ok(Err(Fail::Corrupt(why))) => why,
        // a bug: a dead letter that says so, rather than a job that fails on this record
        Err(_) => Cow::Borrowed("the native decoder panicked (a bug in capa_native)"),
    };
    Err(PyErr::from_value(c.error.bind(py).call1((format!(
        "not a canonical Avro change event: {why}"
    ),))?))
}

#[pymodule]
fn capa_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(decode_event, m)?)?;
    Ok(())
}
