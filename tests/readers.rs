//! Every rating file format: good fixtures parse, each kind of bad line fails with its line number.

use std::path::PathBuf;

use rbm_recommender::model::RatingScale;
use rbm_recommender::readers::{RatingFormat, read_dataset};

fn fixture(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn each_format_is_detected_and_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "u.data",
            "1\t10\t5\t881250949\n2\t10\t3\t881250950\n1\t20\t1\t881250951\n",
            RatingScale::ONE_TO_FIVE,
        ),
        (
            "ratings.dat",
            "1::10::5\n2::10::3::978300760\n1::20::1\n",
            RatingScale::ONE_TO_FIVE,
        ),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,5.0,964982703\n2,10,3.5,964981247\n1,20,0.5,964982224\n",
            RatingScale::HALF_STARS,
        ),
        (
            "mine.csv",
            "user,item,rating\nalice,\"The Matrix, 1999\",5\nbob,x,3\nalice,y,1\n",
            RatingScale::ONE_TO_FIVE,
        ),
    ];
    for (name, text, scale) in cases {
        let data = read_dataset(&fixture(&dir, name, text), None, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(data.ratings.len(), 3, "{name}");
        assert_eq!(data.users.len(), 2, "{name}");
        assert_eq!(data.scale, scale, "{name}");
    }
    let data = read_dataset(&dir.path().join("mine.csv"), None, None).unwrap();
    assert!(data.items.get("The Matrix, 1999").is_some());
    let path = fixture(
        &dir,
        "quotes.csv",
        "\u{feff}user,item,rating\n\"a\",\"say \"\"hi\"\"\nthere\",4\n\nb,x,2\n",
    );
    let data = read_dataset(&path, None, None).unwrap();
    assert_eq!(data.ratings.len(), 2);
    assert!(data.items.get("say \"hi\"\nthere").is_some());
}

#[test]
fn a_movielens_folder_is_read_through_its_ratings_file() {
    let dir = tempfile::tempdir().unwrap();
    fixture(&dir, "ratings.dat", "1::10::5\n2::11::4\n");
    assert_eq!(
        read_dataset(dir.path(), None, None).unwrap().ratings.len(),
        2
    );
}

#[test]
fn bad_lines_fail_with_file_and_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("u.data", "1\t10\t5\t1\n1\t11\t4\n", 2, "expected 4 fields"),
        (
            "u.data",
            "1\t10\t5\t1\n2\t11\tfive\t1\n",
            2,
            "\"five\" is not a number",
        ),
        (
            "ratings.dat",
            "1::10::5\n1::11::4\n1::::4\n",
            3,
            "empty user or item id",
        ),
        (
            "ratings.dat",
            "1::10::5\n1::11::7\n",
            2,
            "rating 7 is not on the scale",
        ),
        (
            "ratings.dat",
            "1::10::5::yesterday\n",
            1,
            "timestamp \"yesterday\" is not an integer",
        ),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,1\n1,11,4.25,1\n",
            3,
            "rating 4.25 is not on the scale",
        ),
        ("plain.csv", "1,2,3\n", 1, "expected a header line"),
        (
            "quoted.csv",
            "user,item,rating\na,\"open,4\n",
            2,
            "expected 3 or 4 fields, found 2",
        ),
        (
            // A quoted newline is part of its field: the bad rating is on line 4, not 3.
            "multiline.csv",
            "user,item,rating\na,\"two\nlines\",4\nb,c,lots\n",
            4,
            "rating \"lots\" is not a number",
        ),
    ];
    for (name, text, line, message) in cases {
        let path = fixture(&dir, name, text);
        let err = read_dataset(&path, None, None).unwrap_err().to_string();
        let location = format!("{}:{line}:", path.display());
        assert!(
            err.contains(&location) && err.contains(message),
            "{name}: got {err:?}, want {location} {message}"
        );
    }
}

#[test]
fn a_forced_format_and_scale_override_detection() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture(&dir, "odd.txt", "a::b::2\nc::d::4\n");
    let data = read_dataset(
        &path,
        Some(RatingFormat::MlDat),
        Some(RatingScale::HALF_STARS),
    )
    .unwrap();
    assert_eq!(data.scale, RatingScale::HALF_STARS);
    let err = read_dataset(&path, Some(RatingFormat::Ml100k), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains(":1:"), "{err}");
}
