//! The Netflix Prize ratings, one file per movie.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::{RawRating, ReadError, next_line};

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
