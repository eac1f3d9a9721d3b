//! JUnit XML test results, as test runners write them: `<testsuites>` of `<testsuite>`s, or
//! one `<testsuite>`, of `<testcase>`s with `<failure>`, `<error>` or `<skipped>`.

/// Largest results file read.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Most XML nodes one file may have.
const MAX_NODES: u32 = 500_000;

/// Longest failure message kept.
const MAX_MESSAGE: usize = 4_096;

/// One test case's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Its file, when the runner says.
    pub file: Option<String>,
    /// Its class (or suite).
    pub classname: String,
    /// Its name.
    pub name: String,
    /// `success`, `failure`, `error` or `skipped`.
    pub result: &'static str,
    /// The failure's message (and text), shortened.
    pub message: Option<String>,
    /// Seconds.
    pub time: f64,
}

/// The cases of a JUnit file.
///
/// # Errors
/// Not UTF-8, not well-formed XML, past the node limit, or no `testsuite`/`testsuites` root.
pub fn parse(data: &[u8]) -> Result<Vec<Case>, String> {
    let text = std::str::from_utf8(data).map_err(|e| format!("not UTF-8: {e}"))?;
    let opts = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: MAX_NODES };
    let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if !matches!(root.tag_name().name(), "testsuites" | "testsuite") {
        return Err(format!("the root element is <{}>, not <testsuites> or <testsuite>", root.tag_name().name()));
    }
    let mut out = Vec::new();
    for case in root.descendants().filter(|n| n.has_tag_name("testcase")) {
        let suite = case.ancestors().find(|a| a.has_tag_name("testsuite"));
        let attr = |n: roxmltree::Node, k: &str| n.attribute(k).map(str::to_string);
        let child = |tag: &str| case.children().find(|c| c.has_tag_name(tag));
        let (result, detail) = if let Some(f) = child("failure") {
            ("failure", Some(f))
        } else if let Some(e) = child("error") {
            ("error", Some(e))
        } else if let Some(s) = child("skipped") {
            ("skipped", Some(s))
        } else {
            ("success", None)
        };
        let message = detail.and_then(|d| {
            let mut m = attr(d, "message").unwrap_or_default();
            if let Some(t) = d.text().map(str::trim).filter(|t| !t.is_empty()) {
                if !m.is_empty() {
                    m.push('\n');
                }
                m.push_str(t);
            }
            if m.len() > MAX_MESSAGE {
                let mut cut = MAX_MESSAGE;
                while !m.is_char_boundary(cut) {
                    cut -= 1;
                }
                m.truncate(cut);
                m.push('…');
            }
            (!m.is_empty()).then_some(m)
        });
        out.push(Case {
            file: attr(case, "file").or_else(|| suite.and_then(|s| attr(s, "file"))),
            classname: attr(case, "classname").or_else(|| suite.and_then(|s| attr(s, "name"))).unwrap_or_default(),
            name: attr(case, "name").unwrap_or_default(),
            result,
            message,
            time: case
                .attribute("time")
                .and_then(|t| t.trim().parse::<f64>().ok())
                .filter(|t| t.is_finite() && *t >= 0.0)
                .unwrap_or(0.0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_with_their_results_messages_and_times() {
        let xml = br#"<?xml version="1.0"?>
<testsuites><testsuite name="math" file="tests/math.py">
  <testcase classname="math.Add" name="one" time="0.5"/>
  <testcase classname="math.Add" name="two" file="tests/add.py" time="1.25"><failure message="2 != 3">assert 2 == 3</failure></testcase>
  <testcase name="three"><skipped/></testcase>
  <testcase name="four" time="nan"><error message="boom"/></testcase>
</testsuite></testsuites>"#;
        let c = parse(xml).expect("parses");
        assert_eq!(c.len(), 4);
        assert_eq!((c[0].result, c[0].time, c[0].file.as_deref()), ("success", 0.5, Some("tests/math.py")));
        assert_eq!(c[1].result, "failure");
        assert_eq!(c[1].message.as_deref(), Some("2 != 3\nassert 2 == 3"));
        assert_eq!(c[1].file.as_deref(), Some("tests/add.py"));
        assert_eq!((c[2].result, c[2].classname.as_str()), ("skipped", "math"));
        assert_eq!((c[3].result, c[3].time), ("error", 0.0));
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        for bad in [&b"<html/>"[..], b"<testsuite>", b"\xff\xfe", b"<!DOCTYPE x [<!ENTITY a 'b'>]><testsuite/>"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let many = format!("<testsuite>{}</testsuite>", "<testcase name='x'/>".repeat(600_000));
        assert!(parse(many.as_bytes()).is_err(), "past the node limit");
    }
}
