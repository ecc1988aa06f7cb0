//! Rating file readers: MovieLens ml-100k `u.data`, ml-1m/10m `ratings.dat`, ml-latest/20m/25m/32m
//! `ratings.csv`, generic `user,item,rating[,timestamp]` CSV, the Netflix Prize folder, and the
//! item titles that come with them. They stream records so that the import command can load files
//! of any size in bounded memory.

mod netflix;
mod titles;

pub use netflix::NetflixReader;
pub use titles::{TitleLayout, read_titles, titles_file};

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::model::{Dataset, DatasetBuilder, ModelError, RatingScale};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RatingFormat {
    /// ml-100k `u.data`: user TAB item TAB rating TAB timestamp.
    Ml100k,
    /// ml-1m / ml-10m `ratings.dat`: user::item::rating[::timestamp].
    MlDat,
    /// ml-latest / 20m / 25m / 32m `ratings.csv`: header userId,movieId,rating,timestamp.
    MlCsv,
    /// Any CSV with a header and columns user,item,rating[,timestamp].
    Csv,
}

impl RatingFormat {
    /// The scale the MovieLens releases use; generic CSV has none and is inferred from its values.
    pub fn default_scale(self) -> Option<RatingScale> {
        match self {
            Self::Ml100k | Self::MlDat => Some(RatingScale::ONE_TO_FIVE),
            Self::MlCsv => Some(RatingScale::HALF_STARS),
            Self::Csv => None,
        }
    }

    fn has_header(self) -> bool {
        matches!(self, Self::MlCsv | Self::Csv)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Unrecognised { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Model { path: PathBuf, source: ModelError },
}

/// One rating as it stands in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRating {
    pub user: String,
    pub item: String,
    pub value: f32,
    /// 1-based line number in the file, for error messages.
    pub line: usize,
}

/// Finds the ratings file of a MovieLens folder (`u.data`, `ratings.dat`, `ratings.csv`), or returns
/// `path` itself if it is a file.
pub fn ratings_file(path: &Path) -> Result<PathBuf, ReadError> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    ["u.data", "ratings.dat", "ratings.csv"]
        .iter()
        .map(|name| path.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| ReadError::Unrecognised {
            path: path.to_path_buf(),
            message: "folder holds none of u.data, ratings.dat, ratings.csv".to_string(),
        })
}

/// Guesses the format from the file name and its first line.
pub fn detect_format(path: &Path) -> Result<RatingFormat, ReadError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut first = String::new();
    BufReader::new(File::open(path).map_err(io)?)
        .read_line(&mut first)
        .map_err(io)?;
    let format = if name == "u.data"
        || name.ends_with(".base")
        || name.ends_with(".test")
        || first.contains('\t')
    {
        RatingFormat::Ml100k
    } else if name.ends_with(".dat") || first.contains("::") {
        RatingFormat::MlDat
    } else if first
        .trim_start_matches('\u{feff}')
        .starts_with("userId,movieId,rating")
    {
        RatingFormat::MlCsv
    } else if first.contains(',') {
        RatingFormat::Csv
    } else {
        return Err(ReadError::Unrecognised {
            path: path.to_path_buf(),
            message: "cannot tell the format from the name or first line; pass --format"
                .to_string(),
        });
    };
    Ok(format)
}

/// Streams the ratings of one file.
pub struct RatingReader<R> {
    path: PathBuf,
    format: RatingFormat,
    records: Records<R>,
    line: usize,
    /// The format has a header line and it has not been read yet.
    header_pending: bool,
}

/// Where the fields come from: CSV (quoted fields may hold commas and newlines) through the csv
/// crate, the MovieLens `::` and tab layouts a line at a time.
enum Records<R> {
    Csv(csv::Reader<R>, csv::StringRecord),
    Lines(std::io::Lines<R>, String),
}

impl RatingReader<BufReader<File>> {
    pub fn open(path: &Path, format: RatingFormat) -> Result<Self, ReadError> {
        let file = File::open(path).map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::new(
            path,
            format,
            BufReader::with_capacity(1 << 16, file),
        ))
    }
}

impl<R: BufRead> RatingReader<R> {
    pub fn new(path: &Path, format: RatingFormat, reader: R) -> Self {
        let records = match format {
            RatingFormat::MlCsv | RatingFormat::Csv => Records::Csv(
                csv::ReaderBuilder::new()
                    // The header is checked as a record, so that its errors name its line.
                    .has_headers(false)
                    .flexible(true)
                    .trim(csv::Trim::All)
                    .from_reader(reader),
                csv::StringRecord::new(),
            ),
            RatingFormat::Ml100k | RatingFormat::MlDat => {
                Records::Lines(reader.lines(), String::new())
            }
        };
        Self {
            path: path.to_path_buf(),
            format,
            records,
            line: 0,
            header_pending: format.has_header(),
        }
    }

    fn malformed(&self, message: impl Into<String>) -> ReadError {
        ReadError::Malformed {
            path: self.path.clone(),
            line: self.line,
            message: message.into(),
        }
    }

    fn parse(&self, fields: &[&str]) -> Result<RawRating, ReadError> {
        let (expected, optional_timestamp) = match self.format {
            RatingFormat::Ml100k => (4, false),
            _ => (3, true),
        };
        if fields.len() != expected && !(optional_timestamp && fields.len() == expected + 1) {
            let want = if optional_timestamp {
                format!("{expected} or {}", expected + 1)
            } else {
                expected.to_string()
            };
            return Err(self.malformed(format!("expected {want} fields, found {}", fields.len())));
        }
        let user = fields[0].trim();
        let item = fields[1].trim();
        if user.is_empty() || item.is_empty() {
            return Err(self.malformed("empty user or item id"));
        }
        let rating = fields[2].trim();
        let value: f32 = rating
            .parse()
            .map_err(|_| self.malformed(format!("rating {rating:?} is not a number")))?;
        if !value.is_finite() {
            return Err(self.malformed(format!("rating {rating:?} is not a finite number")));
        }
        if let Some(timestamp) = fields.get(3)
            && timestamp.trim().parse::<i64>().is_err()
        {
            return Err(self.malformed(format!(
                "timestamp {:?} is not an integer",
                timestamp.trim()
            )));
        }
        Ok(RawRating {
            user: user.to_string(),
            item: item.to_string(),
            value,
            line: self.line,
        })
    }

    fn check_header(&self, fields: &[&str]) -> Result<(), ReadError> {
        if fields.len() < 3 || fields[2].parse::<f32>().is_ok() {
            return Err(self.malformed(
                "expected a header line naming the columns user,item,rating[,timestamp]",
            ));
        }
        Ok(())
    }

    /// Moves to the next non-empty record, with `self.line` at its first line.
    fn advance(&mut self) -> Option<Result<(), ReadError>> {
        loop {
            match &mut self.records {
                Records::Csv(reader, record) => match reader.read_record(record) {
                    Ok(false) => return None,
                    Ok(true) => {
                        self.line = record
                            .position()
                            .map_or(self.line + 1, |p| p.line() as usize);
                        if record.iter().all(str::is_empty) {
                            continue;
                        }
                    }
                    Err(error) => {
                        self.line = error
                            .position()
                            .map_or(self.line + 1, |p| p.line() as usize);
                        let message = match error.kind() {
                            csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
                            _ => error.to_string(),
                        };
                        return Some(Err(self.malformed(message)));
                    }
                },
                Records::Lines(lines, text) => {
                    *text = match lines.next()? {
                        Ok(text) => text,
                        Err(source) => {
                            return Some(Err(ReadError::Io {
                                path: self.path.clone(),
                                source,
                            }));
                        }
                    };
                    self.line += 1;
                    if text.trim().is_empty() {
                        continue;
                    }
                }
            }
            return Some(Ok(()));
        }
    }

    /// The fields of the current record.
    fn fields(&self) -> Vec<&str> {
        match &self.records {
            Records::Csv(_, record) => record.iter().collect(),
            Records::Lines(_, text) => {
                let separator = if self.format == RatingFormat::Ml100k {
                    "\t"
                } else {
                    "::"
                };
                text.trim_end_matches('\r').split(separator).collect()
            }
        }
    }
}

impl<R: BufRead> Iterator for RatingReader<R> {
    type Item = Result<RawRating, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Err(error) = self.advance()? {
                return Some(Err(error));
            }
            let header = std::mem::take(&mut self.header_pending);
            let mut fields = self.fields();
            if header {
                fields[0] = fields[0].trim_start_matches('\u{feff}');
                match self.check_header(&fields) {
                    Ok(()) => continue,
                    Err(error) => return Some(Err(error)),
                }
            }
            return Some(self.parse(&fields));
        }
    }
}

/// Reads a whole ratings file (or MovieLens folder) into a data set, streaming: memory holds the
/// data set, not the file's text. The scale is `scale` if given, else the format's own, else
/// inferred from the values in a first pass over the file.
pub fn read_dataset(
    path: &Path,
    format: Option<RatingFormat>,
    scale: Option<RatingScale>,
) -> Result<Dataset, ReadError> {
    let file = ratings_file(path)?;
    let format = match format {
        Some(format) => format,
        None => detect_format(&file)?,
    };
    let scale = match scale.or(format.default_scale()) {
        Some(scale) => scale,
        None => {
            let mut distinct = HashSet::new();
            for row in RatingReader::open(&file, format)? {
                distinct.insert(row?.value.to_bits());
            }
            RatingScale::infer(distinct.into_iter().map(f32::from_bits)).map_err(|source| {
                ReadError::Model {
                    path: file.clone(),
                    source,
                }
            })?
        }
    };
    let mut data = DatasetBuilder::new(scale, 0);
    for row in RatingReader::open(&file, format)? {
        let row = row?;
        if data.push(&row.user, &row.item, row.value).is_err() {
            return Err(ReadError::Malformed {
                path: file,
                line: row.line,
                message: format!("rating {} is not on the scale {scale}", row.value),
            });
        }
    }
    Ok(data.finish())
}

/// Reads one line as bytes and decodes it: UTF-8 when valid, else Latin-1 (ml-100k, ml-1m and
/// Netflix title files are Latin-1). Returns None at the end of the input.
fn next_line(reader: &mut impl BufRead, buffer: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    buffer.clear();
    if reader.read_until(b'\n', buffer)? == 0 {
        return Ok(None);
    }
    while matches!(buffer.last(), Some(b'\n' | b'\r')) {
        buffer.pop();
    }
    Ok(Some(match std::str::from_utf8(buffer) {
        Ok(text) => text.to_string(),
        Err(_) => buffer.iter().map(|&b| char::from(b)).collect(),
    }))
}
