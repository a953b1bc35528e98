//! Parquet rows through the parquet crate's record API, after the file has
//! been checked by what it declares, so that a bomb is refused rather than
//! allocated:
//! * the footer is walked with the bounds-checking Thrift walker, and the
//!   schema may nest at most [`MAX_SCHEMA_DEPTH`] deep;
//! * every page header of every column chunk is walked too, and the declared
//!   uncompressed page sizes must fit the decompression budget;
//! * rows, values and pages are capped, and so is an estimate of the memory
//!   the record API will use: plain pages as declared, dictionary-encoded
//!   values times the longest dictionary entry (a dictionary page is
//!   decompressed to find it), and a per-value overhead.
//!
//! Only uncompressed, snappy and gzip files are read (the codecs this build
//! has; zstd, lz4 and brotli would need C libraries or more crates).

use bytes::Bytes;
use merit_core::{Reason, RowSchema};
use parquet::basic::{Compression, Type as PhysicalType};
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::record::{Field, Row};
use serde_json::{Map, Number, Value};

use crate::pipeline::Budget;
use crate::rows::{self, Record};
use crate::thrift::{self, Visit};

/// Deepest schema nesting accepted.
pub(crate) const MAX_SCHEMA_DEPTH: usize = 16;
/// Most leaf values (over all columns) a file may declare.
const MAX_VALUES: u64 = 20_000_000;
/// Most pages a file may hold.
const MAX_PAGES: usize = 1_000_000;
/// What one value costs the record API besides its bytes (the `Field`, the
/// row's vector slot), not counting the column name it copies.
const VALUE_OVERHEAD: u64 = 64;

fn refuse(message: impl Into<String>) -> Reason {
    Reason::new("format", "parquet", Value::Null, Value::Null, message)
}

fn over(metric: &str, value: u64, limit: u64, message: String) -> Reason {
    Reason::new("size", metric, value, limit, message)
}

/// Reads the records of a parquet file, or says why it will not.
pub(crate) fn records(
    bytes: &[u8],
    schema: RowSchema,
    budget: &Budget,
    keep_original: bool,
) -> Result<Vec<Record>, Reason> {
    let plan = check(bytes, budget)?;
    let read = std::panic::catch_unwind(|| read_rows(bytes, schema, plan.rows, keep_original));
    read.unwrap_or_else(|_| Err(refuse("the parquet file could not be decoded")))
}

struct Plan {
    rows: usize,
}

/// The schema elements of a footer: (name length, number of children).
#[derive(Default)]
struct FooterVisit {
    schema: Vec<(usize, i64)>,
    num_rows: i64,
}

impl Visit for FooterVisit {
    fn int(&mut self, path: &[i16], value: i64) {
        match path {
            [3] => self.num_rows = value,
            [2, 5] => {
                if let Some(last) = self.schema.last_mut() {
                    last.1 = value;
                }
            }
            _ => {}
        }
    }

    fn bytes(&mut self, path: &[i16], value: &[u8]) {
        if path == [2, 4] {
            if let Some(last) = self.schema.last_mut() {
                last.0 = value.len();
            }
        }
    }

    fn begin(&mut self, path: &[i16]) {
        if path == [2] {
            self.schema.push((0, 0));
        }
    }
}

/// What a page header declares.
#[derive(Default)]
struct PageVisit {
    kind: i64,
    uncompressed: i64,
    compressed: i64,
    values: i64,
    encoding: i64,
}

impl Visit for PageVisit {
    fn int(&mut self, path: &[i16], value: i64) {
        match path {
            [1] => self.kind = value,
            [2] => self.uncompressed = value,
            [3] => self.compressed = value,
            [5, 1] | [7, 1] | [8, 1] => self.values = value,
            [5, 2] | [7, 2] | [8, 4] => self.encoding = value,
            _ => {}
        }
    }
}

const DATA_PAGE: i64 = 0;
const DICTIONARY_PAGE: i64 = 2;
const DATA_PAGE_V2: i64 = 3;
const PLAIN_DICTIONARY: i64 = 2;
const RLE_DICTIONARY: i64 = 8;

fn check(bytes: &[u8], budget: &Budget) -> Result<Plan, Reason> {
    let n = bytes.len();
    if n < 12 || &bytes[..4] != b"PAR1" || &bytes[n - 4..] != b"PAR1" {
        return Err(refuse("the file is not a parquet file (no PAR1 magic at both ends)"));
    }
    let footer_len = u32::from_le_bytes([bytes[n - 8], bytes[n - 7], bytes[n - 6], bytes[n - 5]]) as usize;
    if footer_len + 12 > n {
        return Err(refuse("the parquet footer is longer than the file"));
    }
    let footer = &bytes[n - 8 - footer_len..n - 8];
    let mut fv = FooterVisit::default();
    thrift::walk_struct(footer, &mut fv).map_err(|e| refuse(format!("the parquet footer is malformed: {e}")))?;
    schema_depth(&fv.schema)?;
    if fv.num_rows < 0 || fv.num_rows as u64 > budget.max_rows as u64 {
        return Err(over(
            "rows",
            fv.num_rows.max(0) as u64,
            budget.max_rows as u64,
            format!("the parquet file declares {} rows, over the limit of {}", fv.num_rows, budget.max_rows),
        ));
    }
    let meta = std::panic::catch_unwind(|| ParquetMetaDataReader::decode_metadata(footer))
        .map_err(|_| refuse("the parquet footer could not be decoded"))?
        .map_err(|e| refuse(format!("the parquet footer cannot be decoded: {e}")))?;
    let names: u64 = fv.schema.iter().map(|(len, _)| *len as u64).sum();
    let data_end = (n - 8 - footer_len) as u64;
    let (mut uncompressed, mut page_bytes, mut values, mut pages, mut estimate) = (0u64, 0u64, 0u64, 0usize, 0u64);
    for rg in meta.row_groups() {
        if rg.num_rows() < 0 {
            return Err(refuse("a parquet row group declares a negative row count"));
        }
        for col in rg.columns() {
            match col.compression() {
                Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::GZIP(_) => {}
                other => {
                    return Err(refuse(format!(
                        "the parquet file uses {other} compression; Merit reads uncompressed, snappy or gzip files"
                    )))
                }
            }
            let start = col.dictionary_page_offset().unwrap_or(col.data_page_offset());
            let len = col.compressed_size();
            if start < 4 || len < 0 || (start as u64).saturating_add(len as u64) > data_end {
                return Err(refuse("a parquet column chunk lies outside the file"));
            }
            let declared = col.uncompressed_size().max(0) as u64;
            uncompressed = uncompressed.saturating_add(declared);
            if uncompressed > budget.decompressed {
                return Err(over(
                    "decompressed_bytes",
                    uncompressed,
                    budget.decompressed,
                    format!("the parquet file declares more than {} bytes uncompressed", budget.decompressed),
                ));
            }
            let byte_array = col.column_type() == PhysicalType::BYTE_ARRAY;
            let chunk = &bytes[start as usize..(start + len) as usize];
            let mut pos = 0usize;
            let (mut dict_len, mut dict_values, mut plain) = (0u64, 0u64, 0u64);
            while pos < chunk.len() {
                pages += 1;
                if pages > MAX_PAGES {
                    return Err(refuse(format!("the parquet file holds more than {MAX_PAGES} pages")));
                }
                let mut pv = PageVisit::default();
                let header_len = thrift::walk_struct(&chunk[pos..], &mut pv)
                    .map_err(|e| refuse(format!("a parquet page header is malformed: {e}")))?;
                if pv.uncompressed < 0 || pv.compressed < 0 || pv.values < 0 {
                    return Err(refuse("a parquet page header declares a negative size"));
                }
                let body_start = pos + header_len;
                let body_end = body_start.saturating_add(pv.compressed as usize);
                if body_end > chunk.len() {
                    return Err(refuse("a parquet page runs past its column chunk"));
                }
                page_bytes = page_bytes.saturating_add(pv.uncompressed as u64);
                if page_bytes > budget.decompressed {
                    return Err(over(
                        "decompressed_bytes",
                        page_bytes,
                        budget.decompressed,
                        format!(
                            "the parquet file's pages declare more than {} bytes uncompressed",
                            budget.decompressed
                        ),
                    ));
                }
                match pv.kind {
                    DICTIONARY_PAGE => {
                        let body = &chunk[body_start..body_end];
                        dict_len = dict_len.max(if byte_array {
                            longest_plain_byte_array(body, col.compression(), pv.uncompressed as u64)?
                        } else {
                            16
                        });
                    }
                    DATA_PAGE | DATA_PAGE_V2 => {
                        values = values.saturating_add(pv.values as u64);
                        if pv.encoding == PLAIN_DICTIONARY || pv.encoding == RLE_DICTIONARY {
                            dict_values = dict_values.saturating_add(pv.values as u64);
                        } else {
                            plain = plain.saturating_add(pv.uncompressed as u64);
                        }
                    }
                    _ => {}
                }
                pos = body_end;
            }
            estimate = estimate.saturating_add(plain).saturating_add(dict_values.saturating_mul(dict_len));
        }
    }
    if values > MAX_VALUES {
        return Err(over(
            "values",
            values,
            MAX_VALUES,
            format!("the parquet file declares more than {MAX_VALUES} values"),
        ));
    }
    estimate =
        estimate.saturating_add(values.saturating_add(fv.num_rows as u64).saturating_mul(VALUE_OVERHEAD + names));
    let memory = budget.decompressed.saturating_mul(4);
    if estimate > memory {
        return Err(over(
            "decoded_bytes",
            estimate,
            memory,
            format!("decoding the parquet file would take about {estimate} bytes, over the limit of {memory}"),
        ));
    }
    Ok(Plan { rows: fv.num_rows as usize })
}

/// Refuses schemas nested deeper than [`MAX_SCHEMA_DEPTH`] (the parquet crate
/// builds them recursively) or whose child counts do not add up.
fn schema_depth(schema: &[(usize, i64)]) -> Result<(), Reason> {
    let mut open: Vec<i64> = Vec::new();
    for (i, &(_, children)) in schema.iter().enumerate() {
        if i > 0 {
            match open.last_mut() {
                Some(left) => *left -= 1,
                None => return Err(refuse("the parquet schema has more elements than its root holds")),
            }
        }
        if children < 0 {
            return Err(refuse("the parquet schema declares a negative number of children"));
        }
        if children > 0 {
            open.push(children);
            if open.len() > MAX_SCHEMA_DEPTH {
                return Err(refuse(format!("the parquet schema nests deeper than {MAX_SCHEMA_DEPTH}")));
            }
        }
        while open.last() == Some(&0) {
            open.pop();
        }
    }
    if schema.is_empty() {
        return Err(refuse("the parquet file has no schema"));
    }
    Ok(())
}

/// The longest value of a PLAIN-encoded BYTE_ARRAY dictionary page.
fn longest_plain_byte_array(body: &[u8], codec: Compression, declared: u64) -> Result<u64, Reason> {
    let owned;
    let page: &[u8] = match codec {
        Compression::SNAPPY => {
            let len = snap::raw::decompress_len(body)
                .map_err(|e| refuse(format!("a parquet dictionary page is corrupt: {e}")))?;
            if len as u64 > declared {
                return Err(refuse("a parquet dictionary page is larger than its header says"));
            }
            owned = snap::raw::Decoder::new()
                .decompress_vec(body)
                .map_err(|e| refuse(format!("a parquet dictionary page is corrupt: {e}")))?;
            &owned
        }
        Compression::GZIP(_) => {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(declared.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| refuse(format!("a parquet dictionary page is corrupt: {e}")))?;
            if out.len() as u64 > declared {
                return Err(refuse("a parquet dictionary page is larger than its header says"));
            }
            owned = out;
            &owned
        }
        _ => body,
    };
    let mut longest = 0u64;
    let mut i = 0usize;
    while i + 4 <= page.len() {
        let len = u32::from_le_bytes([page[i], page[i + 1], page[i + 2], page[i + 3]]) as u64;
        longest = longest.max(len);
        i = i.saturating_add(4).saturating_add(len as usize);
    }
    Ok(longest)
}

fn read_rows(bytes: &[u8], schema: RowSchema, expected: usize, keep_original: bool) -> Result<Vec<Record>, Reason> {
    let reader = SerializedFileReader::new(Bytes::copy_from_slice(bytes))
        .map_err(|e| refuse(format!("the parquet file cannot be opened: {e}")))?;
    let iter = reader.get_row_iter(None).map_err(|e| refuse(format!("the parquet rows cannot be read: {e}")))?;
    let mut out = Vec::with_capacity(expected.min(1 << 20));
    for row in iter {
        let row = row.map_err(|e| refuse(format!("parquet row {} cannot be decoded: {e}", out.len())))?;
        out.push(rows::record(schema, row_to_json(&row), keep_original));
        if out.len() > expected {
            return Err(refuse("the parquet file holds more rows than it declares"));
        }
    }
    Ok(out)
}

fn row_to_json(row: &Row) -> Value {
    let mut map = Map::new();
    for (name, field) in row.get_column_iter() {
        map.insert(name.clone(), field_to_json(field));
    }
    Value::Object(map)
}

fn number(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// A parquet value as JSON: strings (and UTF-8 binary) as strings, numbers as
/// numbers, groups as objects, lists as arrays, maps as objects.
fn field_to_json(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(v) => Value::from(*v),
        Field::Short(v) => Value::from(*v),
        Field::Int(v) => Value::from(*v),
        Field::Long(v) => Value::from(*v),
        Field::UByte(v) => Value::from(*v),
        Field::UShort(v) => Value::from(*v),
        Field::UInt(v) => Value::from(*v),
        Field::ULong(v) => Value::from(*v),
        Field::Float16(v) => number(f64::from(*v)),
        Field::Float(v) => number(f64::from(*v)),
        Field::Double(v) => number(*v),
        Field::Decimal(_) => Value::Null,
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::Null,
        },
        Field::Date(d) => Value::from(*d),
        Field::TimestampMillis(t) | Field::TimestampMicros(t) => Value::from(*t),
        Field::Group(row) => row_to_json(row),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_to_json).collect()),
        Field::MapInternal(map) => {
            let mut out = Map::new();
            for (k, v) in map.entries() {
                let key = match field_to_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, field_to_json(v));
            }
            Value::Object(out)
        }
    }
}

/// Every row of a parquet file as a JSON object, for training data read from
/// a local file: the same hardened reader as the gates, with room for up to
/// ten million rows and 1 GiB decompressed.
pub fn all_rows(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let budget = Budget { decompressed: 1 << 30, max_rows: 10_000_000 };
    let plan = check(bytes, &budget).map_err(|r| r.message)?;
    let read = std::panic::catch_unwind(|| -> Result<Vec<Value>, String> {
        let reader = SerializedFileReader::new(Bytes::copy_from_slice(bytes))
            .map_err(|e| format!("the parquet file cannot be opened: {e}"))?;
        let iter = reader.get_row_iter(None).map_err(|e| format!("the parquet rows cannot be read: {e}"))?;
        let mut out = Vec::with_capacity(plan.rows.min(1 << 20));
        for row in iter {
            let row = row.map_err(|e| format!("parquet row {} cannot be decoded: {e}", out.len()))?;
            out.push(row_to_json(&row));
        }
        Ok(out)
    });
    read.unwrap_or_else(|_| Err("the parquet file could not be decoded".into()))
}
