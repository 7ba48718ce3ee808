//! Reading a CSV file with a header row, row by row, with every problem as a [`DataError`]
//! naming the line where the row starts.
//!
//! Lines are counted here rather than taken from `csv::Position::line`: with CRLF line ends the
//! csv crate reports a record's position before the `\n` that ends the previous line (one line
//! early), and before any blank lines it skips.

use std::io::Cursor;
use std::path::Path;

use csv::StringRecord;

use crate::error::{DataError, DataErrorKind};

/// Bytes a table file's reading holds at once, per byte of the file: the file itself, each
/// field's copy as it is parsed, and the interned texts the samples keep.
const READ_BYTES_PER_FILE_BYTE: u64 = 4;

/// The whole of a table file, refused before it is read when reading it would not fit in the
/// host's memory (a table is read whole, then parsed).
pub(crate) fn read_whole(path: &Path) -> Result<Vec<u8>, DataError> {
    let size = std::fs::metadata(path).map_err(|e| DataError::file(path, DataErrorKind::Io(e)))?.len();
    calm_ir::limits::check_host(
        || format!("reading {}", path.display()),
        size.saturating_mul(READ_BYTES_PER_FILE_BYTE),
    )
    .map_err(|e| DataError::file(path, DataErrorKind::Memory(e)))?;
    std::fs::read(path).map_err(|e| DataError::file(path, DataErrorKind::Io(e)))
}

/// A CSV file being read: its header and a cursor over the rows.
pub(crate) struct CsvFile<'a> {
    path: &'a Path,
    reader: csv::Reader<Cursor<Vec<u8>>>,
    lines: LineCounter,
    pub header: StringRecord,
}

impl<'a> CsvFile<'a> {
    /// Opens `path` and reads its header row; an empty (or whitespace-only) file is an error.
    pub fn open(path: &'a Path) -> Result<CsvFile<'a>, DataError> {
        let bytes = read_whole(path)?;
        // Flexible: rows of the wrong length are reported by `next` with the row's line.
        let reader = csv::ReaderBuilder::new().flexible(true).from_reader(Cursor::new(bytes));
        let mut file = CsvFile { path, reader, lines: LineCounter::default(), header: StringRecord::new() };
        file.header = match file.reader.headers() {
            Ok(header) => header.clone(),
            Err(e) => return Err(file.csv_error(e)),
        };
        if file.header.iter().all(|f| f.trim().is_empty()) {
            return Err(DataError::file(path, DataErrorKind::Empty));
        }
        Ok(file)
    }

    /// The index of each named column, in order; every missing column is named in one error,
    /// a column named twice is an error.
    pub fn columns(&self, names: &[&str]) -> Result<Vec<usize>, DataError> {
        let found: Vec<String> = self.header.iter().map(|f| f.trim().to_string()).collect();
        let mut columns = Vec::with_capacity(names.len());
        let mut missing = Vec::new();
        for &name in names {
            let mut at = found.iter().enumerate().filter(|(_, f)| *f == name).map(|(i, _)| i);
            match (at.next(), at.next()) {
                (Some(i), None) => columns.push(i),
                (Some(_), Some(_)) => {
                    return Err(DataError::at(self.path, 1, DataErrorKind::DuplicateColumn { name: name.to_string() }))
                }
                (None, _) => missing.push(name.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(DataError::at(self.path, 1, DataErrorKind::MissingColumns { names: missing, found }));
        }
        Ok(columns)
    }

    /// The next row and the 1-based line where it starts, or `None` at the end; a row with a
    /// different number of fields from the header is an error.
    pub fn next(&mut self, record: &mut StringRecord) -> Result<Option<usize>, DataError> {
        match self.reader.read_record(record) {
            Ok(false) => Ok(None),
            Ok(true) => {
                let line = self.line(record.position());
                if record.len() != self.header.len() {
                    let kind = DataErrorKind::FieldCount { expected: self.header.len(), found: record.len() };
                    return Err(DataError::at(self.path, line, kind));
                }
                Ok(Some(line))
            }
            Err(e) => Err(self.csv_error(e)),
        }
    }

    /// The 1-based line where the record at `position` starts.
    fn line(&mut self, position: Option<&csv::Position>) -> usize {
        let byte = position.map_or(0, |p| p.byte() as usize);
        self.lines.line_at(self.reader.get_ref().get_ref(), byte)
    }

    fn csv_error(&mut self, e: csv::Error) -> DataError {
        let line = e.position().map(|p| p.byte() as usize);
        let line = line.map(|byte| self.lines.line_at(self.reader.get_ref().get_ref(), byte));
        let message = e.to_string();
        let kind = match e.into_kind() {
            csv::ErrorKind::Io(e) => DataErrorKind::Io(e),
            csv::ErrorKind::Utf8 { .. } => DataErrorKind::Utf8,
            _ => DataErrorKind::Csv(message),
        };
        DataError::new(self.path, line, kind)
    }
}

/// Line numbers of byte offsets, counted incrementally (records come in file order).
#[derive(Debug, Default)]
struct LineCounter {
    /// A byte offset and the number of `\n` before it.
    offset: usize,
    newlines: usize,
}

impl LineCounter {
    /// The line of the first byte at or after `byte` that is not a line end: where a record
    /// that the reader placed at `byte` really starts.
    fn line_at(&mut self, bytes: &[u8], byte: usize) -> usize {
        let mut start = byte.min(bytes.len());
        while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        if start < self.offset {
            *self = LineCounter::default();
        }
        self.newlines += bytes[self.offset..start].iter().filter(|&&b| b == b'\n').count();
        self.offset = start;
        self.newlines + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_line_ends_before_a_record() {
        let bytes = b"a\r\nb\n\n\r\nc\nd";
        let mut lines = LineCounter::default();
        assert_eq!(lines.line_at(bytes, 0), 1);
        assert_eq!(lines.line_at(bytes, 2), 2);
        assert_eq!(lines.line_at(bytes, 5), 5);
        assert_eq!(lines.line_at(bytes, 10), 6);
        assert_eq!(lines.line_at(bytes, 99), 6);
        assert_eq!(lines.line_at(bytes, 0), 1);
    }
}
