//! Item titles: ml-100k `u.item`, ml-1m/10m `movies.dat`, ml-latest `movies.csv`, Netflix
//! `movie_titles.txt`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::{ReadError, next_line};

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
