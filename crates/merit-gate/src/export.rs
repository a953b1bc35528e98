//! Writing rows as a parquet file that pandas (pyarrow) reads.
//!
//! ```
//! use merit_gate::export::{write_parquet, Column};
//! let bytes = write_parquet(&[
//!     ("row".to_string(), Column::Int64(vec![0, 1])),
//!     ("text".to_string(), Column::Utf8(vec!["a".into(), "b".into()])),
//! ])
//! .unwrap();
//! assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
//! ```

use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

/// One column of values, all required (no nulls).
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// 64-bit integers (parquet INT64).
    Int64(Vec<i64>),
    /// 64-bit floats (parquet DOUBLE).
    Double(Vec<f64>),
    /// UTF-8 strings (parquet BYTE_ARRAY, logical type STRING).
    Utf8(Vec<String>),
}

impl Column {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Column::Int64(v) => v.len(),
            Column::Double(v) => v.len(),
            Column::Utf8(v) => v.len(),
        }
    }

    /// Whether the column holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a parquet file could not be written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// No columns were given.
    #[error("a parquet file needs at least one column")]
    NoColumns,
    /// Two columns have different lengths.
    #[error("column `{name}` has {len} values but column `{first}` has {expected}")]
    Length {
        /// The column whose length differs.
        name: String,
        /// Its length.
        len: usize,
        /// The first column's name.
        first: String,
        /// The first column's length.
        expected: usize,
    },
    /// A column name is empty or repeated.
    #[error("column name `{0}` is empty or used twice")]
    Name(String),
    /// The parquet writer failed.
    #[error("parquet: {0}")]
    Parquet(String),
}

impl From<parquet::errors::ParquetError> for ExportError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        ExportError::Parquet(e.to_string())
    }
}

/// Rows per row group: keeps memory bounded for readers of big exports.
const ROW_GROUP: usize = 64 * 1024;

/// Writes one snappy-compressed parquet file. Columns are `(name, data)`, all
/// of the same length.
pub fn write_parquet(columns: &[(String, Column)]) -> Result<Vec<u8>, ExportError> {
    let (first_name, first) = columns.first().ok_or(ExportError::NoColumns)?;
    let mut names = std::collections::HashSet::new();
    for (name, col) in columns {
        if name.is_empty() || !names.insert(name.as_str()) {
            return Err(ExportError::Name(name.clone()));
        }
        if col.len() != first.len() {
            return Err(ExportError::Length {
                name: name.clone(),
                len: col.len(),
                first: first_name.clone(),
                expected: first.len(),
            });
        }
    }
    let mut fields = Vec::with_capacity(columns.len());
    for (name, col) in columns {
        let field = match col {
            Column::Int64(_) => Type::primitive_type_builder(name, PhysicalType::INT64),
            Column::Double(_) => Type::primitive_type_builder(name, PhysicalType::DOUBLE),
            Column::Utf8(_) => Type::primitive_type_builder(name, PhysicalType::BYTE_ARRAY)
                .with_logical_type(Some(LogicalType::String)),
        }
        .with_repetition(Repetition::REQUIRED)
        .build()?;
        fields.push(Arc::new(field));
    }
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, props)?;
    let total = first.len();
    let mut start = 0;
    loop {
        let end = (start + ROW_GROUP).min(total);
        let mut group = writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut col) = group.next_column()? {
            let Some((_, data)) = columns.get(index) else {
                return Err(ExportError::Parquet("more parquet columns than given".to_string()));
            };
            match data {
                Column::Int64(v) => {
                    col.typed::<Int64Type>().write_batch(&v[start..end], None, None)?;
                }
                Column::Double(v) => {
                    col.typed::<DoubleType>().write_batch(&v[start..end], None, None)?;
                }
                Column::Utf8(v) => {
                    let values: Vec<ByteArray> =
                        v[start..end].iter().map(|s| ByteArray::from(s.as_bytes().to_vec())).collect();
                    col.typed::<ByteArrayType>().write_batch(&values, None, None)?;
                }
            }
            col.close()?;
            index += 1;
        }
        group.close()?;
        start = end;
        if start >= total {
            break;
        }
    }
    writer.close()?;
    Ok(out)
}
