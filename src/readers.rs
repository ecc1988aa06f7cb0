//! Rating file readers: MovieLens ml-100k `u.data`, ml-1m/10m `ratings.dat`, ml-latest/20m/25m/32m
//! `ratings.csv`, and generic `user,item,rating[,timestamp]` CSV. They stream records one line at a
//! time so that the import command can load files of any size in bounded memory.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::model::{Dataset, ModelError, RatingScale};

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

/// Reads a whole ratings file (or MovieLens folder) into a data set. The scale is `scale` if given,
/// else the format's own, else inferred from the values.
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
    let rows: Vec<RawRating> = RatingReader::open(&file, format)?.collect::<Result<_, _>>()?;
    let scale = match scale.or(format.default_scale()) {
        Some(scale) => scale,
        None => {
            RatingScale::infer(rows.iter().map(|r| r.value)).map_err(|source| ReadError::Model {
                path: file.clone(),
                source,
            })?
        }
    };
    if let Some(bad) = rows.iter().find(|r| scale.class_of(r.value).is_err()) {
        return Err(ReadError::Malformed {
            path: file,
            line: bad.line,
            message: format!("rating {} is not on the scale {scale}", bad.value),
        });
    }
    Dataset::from_rows(
        scale,
        rows.iter()
            .map(|r| (r.user.as_str(), r.item.as_str(), r.value)),
    )
    .map_err(|source| ReadError::Model { path: file, source })
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

/// The titles file of a data set folder and how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TitleLayout {
    /// ml-100k `u.item`: id|title|…
    Pipe,
    /// ml-1m/10m `movies.dat`: id::title::genres
    DoubleColon,
    /// ml-latest `movies.csv`: movieId,title,genres with a header
    Csv,
    /// Netflix `movie_titles.txt`: id,year,title (the title may hold commas)
    Netflix,
}

/// Finds the item titles that come with a data set folder, if any.
pub fn titles_file(folder: &Path) -> Option<(PathBuf, TitleLayout)> {
    [
        ("u.item", TitleLayout::Pipe),
        ("movies.dat", TitleLayout::DoubleColon),
        ("movies.csv", TitleLayout::Csv),
        ("movie_titles.txt", TitleLayout::Netflix),
    ]
    .into_iter()
    .map(|(name, layout)| (folder.join(name), layout))
    .find(|(path, _)| path.is_file())
}

/// Reads (item id, title) pairs from a titles file found by `titles_file`.
pub fn read_titles(path: &Path, layout: TitleLayout) -> Result<Vec<(String, String)>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(io)?);
    if layout == TitleLayout::Csv {
        return read_csv_titles(path, reader);
    }
    let (separator, title_field) = match layout {
        TitleLayout::Pipe => ("|", 1),
        TitleLayout::DoubleColon => ("::", 1),
        // id,year,title: the title may hold commas, and is not quoted.
        TitleLayout::Netflix => (",", 2),
        TitleLayout::Csv => unreachable!("read as CSV above"),
    };
    let mut reader = reader;
    let (mut buffer, mut titles, mut line) = (Vec::new(), Vec::new(), 0);
    while let Some(text) = next_line(&mut reader, &mut buffer).map_err(io)? {
        line += 1;
        if text.trim().is_empty() {
            continue;
        }
        let mut fields = text.splitn(3, separator);
        let id = fields.next().unwrap_or_default();
        let title = fields.nth(title_field - 1);
        titles.push(title_pair(path, line, id, title)?);
    }
    Ok(titles)
}

/// ml-latest `movies.csv`: movieId,title,genres with a header; titles with commas are quoted.
fn read_csv_titles(
    path: &Path,
    reader: impl std::io::Read,
) -> Result<Vec<(String, String)>, ReadError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let mut titles = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|error| ReadError::Malformed {
            path: path.to_path_buf(),
            line: error.position().map_or(0, |p| p.line() as usize),
            message: error.to_string(),
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        titles.push(title_pair(path, line, &record[0], record.get(1))?);
    }
    Ok(titles)
}

fn title_pair(
    path: &Path,
    line: usize,
    id: &str,
    title: Option<&str>,
) -> Result<(String, String), ReadError> {
    match title {
        Some(title) if !id.trim().is_empty() => {
            Ok((id.trim().to_string(), title.trim().to_string()))
        }
        _ => Err(ReadError::Malformed {
            path: path.to_path_buf(),
            line,
            message: "expected an id and a title".to_string(),
        }),
    }
}

/// The Netflix Prize layout: `training_set/mv_*.txt`, each a `MovieID:` line followed by
/// `CustomerID,Rating,Date` lines. Streams the ratings of every file in name order.
pub struct NetflixReader {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<(PathBuf, BufReader<File>, String, usize)>,
    buffer: Vec<u8>,
}

impl NetflixReader {
    pub fn open(folder: &Path) -> Result<Self, ReadError> {
        let dir = folder.join("training_set");
        let io = |source| ReadError::Io {
            path: dir.clone(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("mv_") && n.ends_with(".txt"))
            })
            .collect();
        files.sort();
        Ok(Self {
            files: files.into_iter(),
            current: None,
            buffer: Vec::new(),
        })
    }
}

impl Iterator for NetflixReader {
    type Item = Result<RawRating, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let path = self.files.next()?;
                match File::open(&path) {
                    Ok(file) => {
                        self.current = Some((
                            path,
                            BufReader::with_capacity(1 << 16, file),
                            String::new(),
                            0,
                        ))
                    }
                    Err(source) => return Some(Err(ReadError::Io { path, source })),
                }
            }
            let (path, reader, movie, line) = self.current.as_mut().expect("a file is open");
            let text = match next_line(reader, &mut self.buffer) {
                Ok(Some(text)) => text,
                Ok(None) => {
                    self.current = None;
                    continue;
                }
                Err(source) => {
                    return Some(Err(ReadError::Io {
                        path: path.clone(),
                        source,
                    }));
                }
            };
            *line += 1;
            let malformed = |message: String| ReadError::Malformed {
                path: path.clone(),
                line: *line,
                message,
            };
            if *line == 1 {
                match text.trim().strip_suffix(':') {
                    Some(id) if !id.is_empty() => *movie = id.to_string(),
                    _ => return Some(Err(malformed("expected the `MovieID:` line".to_string()))),
                }
                continue;
            }
            if text.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = text.split(',').collect();
            if fields.len() != 3 {
                return Some(Err(malformed(format!(
                    "expected 3 fields, found {}",
                    fields.len()
                ))));
            }
            let value = match fields[1].trim().parse::<f32>() {
                Ok(v) if v.is_finite() => v,
                _ => {
                    return Some(Err(malformed(format!(
                        "rating {:?} is not a number",
                        fields[1].trim()
                    ))));
                }
            };
            return Some(Ok(RawRating {
                user: fields[0].trim().to_string(),
                item: movie.clone(),
                value,
                line: *line,
            }));
        }
    }
}
