//! `--seed S --timeline out.svg` (issue 22): one run drawn over virtual time. The file is
//! a well-formed SVG document, the same bytes on every run, and draws what the run did.

use std::process::Command;

use persistent_connection_sim::timeline::record_seed;
use persistent_connection_sim::world::{RunOptions, run_seed};

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_persistent-connection-sim"))
        .args(args)
        .output()
        .expect("the simulator runs")
}

/// Checks XML well-formedness as far as this picture needs: every tag closed in order,
/// attributes quoted, text free of raw `<` and of `&` outside an entity. Returns the
/// root element's start tag.
fn well_formed(doc: &str) -> Result<String, String> {
    let mut open: Vec<String> = Vec::new();
    let mut root = None;
    let mut rest = doc.trim_end();
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            check_text(rest)?;
            break;
        };
        check_text(&rest[..lt])?;
        let gt = rest[lt..]
            .find('>')
            .ok_or_else(|| format!("unclosed tag at {:?}", &rest[lt..rest.len().min(lt + 40)]))?
            + lt;
        let tag = &rest[lt + 1..gt];
        if let Some(name) = tag.strip_prefix('/') {
            match open.pop() {
                Some(o) if o == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
        } else {
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("bad tag name in <{tag}>"));
            }
            check_attributes(&body[name.len()..])?;
            if open.is_empty() {
                if root.is_some() {
                    return Err(format!("a second root element <{tag}>"));
                }
                root = Some(tag.to_owned());
            }
            if !self_closing {
                open.push(name);
            }
        }
        rest = &rest[gt + 1..];
    }
    if !open.is_empty() {
        return Err(format!("left open: {open:?}"));
    }
    root.ok_or_else(|| "no element".to_owned())
}

fn check_text(text: &str) -> Result<(), String> {
    for (i, _) in text.match_indices('&') {
        let entity = &text[i..];
        if !["&amp;", "&lt;", "&gt;", "&quot;"]
            .iter()
            .any(|e| entity.starts_with(e))
        {
            return Err(format!("raw & in {text:?}"));
        }
    }
    Ok(())
}

fn check_attributes(mut attrs: &str) -> Result<(), String> {
    loop {
        attrs = attrs.trim_start();
        if attrs.is_empty() {
            return Ok(());
        }
        let eq = attrs
            .find("=\"")
            .ok_or_else(|| format!("unquoted attribute in {attrs:?}"))?;
        let name = &attrs[..eq];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("bad attribute name {name:?}"));
        }
        let value_end = attrs[eq + 2..]
            .find('"')
            .ok_or_else(|| format!("unterminated attribute value in {attrs:?}"))?;
        let value = &attrs[eq + 2..eq + 2 + value_end];
        if value.contains('<') {
            return Err(format!("raw < in attribute {value:?}"));
        }
        check_text(value)?;
        attrs = &attrs[eq + 2 + value_end + 1..];
    }
}

#[test]
fn the_checker_rejects_what_is_not_well_formed() {
    assert!(well_formed(r#"<svg a="1"><g><rect/></g></svg>"#).is_ok());
    assert!(well_formed(r#"<svg><g></svg>"#).is_err());
    assert!(well_formed(r#"<svg a=1></svg>"#).is_err());
    assert!(well_formed(r#"<svg><text>a & b</text></svg>"#).is_err());
    assert!(well_formed(r#"<svg></svg><svg></svg>"#).is_err());
    assert!(well_formed(r#"<svg><text>c1@s0 &lt;</text></svg>"#).is_ok());
}

#[test]
fn a_seed_s_timeline_is_a_valid_svg_written_the_same_on_every_run() {
    let dir = std::env::temp_dir().join(format!("pc-sim-timeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.svg");
    let b = dir.join("b.svg");
    for path in [&a, &b] {
        let out = sim(&["--seed", "3", "--timeline", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let svg = std::fs::read_to_string(&a).unwrap();
    assert_eq!(svg, std::fs::read_to_string(&b).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    let root = well_formed(&svg).unwrap_or_else(|e| panic!("not well-formed: {e}"));
    assert!(root.starts_with("svg "), "{root}");
    assert!(
        root.contains(r#"xmlns="http://www.w3.org/2000/svg""#),
        "{root}"
    );
    assert!(root.contains("viewBox="), "{root}");
    for lane in ["events", "attempts", "connections", "close"] {
        assert!(svg.contains(&format!(">{lane}</text>")), "lane {lane}");
    }
    assert!(svg.contains("--seed 3: passed"));
    // Seed 3 connects three times (c1@s0, c2@s1, c3@s2) and closes.
    for conn in ["c1@s0", "c2@s1", "c3@s2"] {
        assert!(svg.contains(conn), "{conn}");
    }
    assert!(svg.contains(">close()</text>") && svg.contains(">finished</text>"));
}

#[test]
fn the_timeline_draws_every_attempt_event_and_connection_of_the_run() {
    for seed in 0..40 {
        let totals = run_seed(seed, &RunOptions::default()).unwrap().totals;
        let (result, timeline) = record_seed(seed, &RunOptions::default());
        let report = result.unwrap();
        // The watcher changes nothing: the same run.
        assert_eq!(report.totals.steps, totals.steps, "seed {seed}");
        assert_eq!(timeline.attempts() as u64, totals.attempts, "seed {seed}");
        assert_eq!(timeline.events() as u64, totals.events, "seed {seed}");
        assert_eq!(
            timeline.connections() as u64,
            totals.connections + totals.late_connections,
            "seed {seed}"
        );
        let svg = timeline.svg(&format!("seed {seed}"));
        well_formed(&svg).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(!svg.contains("VIOLATION"));
    }
}

#[test]
fn a_failing_seed_draws_its_violation() {
    let path = std::env::temp_dir().join(format!("pc-sim-timeline-m-{}.svg", std::process::id()));
    let out = sim(&[
        "--seed",
        "5",
        "--mutant",
        "skip-dedup",
        "--timeline",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "the mutant is caught");
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    well_formed(&svg).unwrap_or_else(|e| panic!("not well-formed: {e}"));
    assert!(svg.contains("FAILED: I2"), "the title names the invariant");
    assert!(
        svg.contains("VIOLATION at 22.800526 s: I2"),
        "the violation is drawn"
    );
}
