//! The report end to end on a tiny corpus: its numbers parse back to the artifacts' values, every digest it
//! cites is an artifact of the lock, and headless Chromium renders it with every image loaded.

mod util;

use std::path::Path;
use std::process::Command;

use util::Project;

const STAGES: &str = "
  - name: scaler
    kind: scaler
    inputs: [features, slice]
  - name: train
    kind: train
    inputs: [features, scaler, slice, ingest]
    foreach: {augment: [false, true]}
    params: {arch: efficient_vgg, width: 0.25, batch_size: 16, max_epochs: 2}
  - name: tournament
    kind: tournament
    inputs: [train, features, scaler, slice, ingest]
  - name: cv
    kind: cv
    inputs: [features, slice, split, ingest]
    foreach: {mode: [grouped, study_replica], fold: [0, 1, 2]}
    params:
      folds: 3
      train: {arch: efficient_vgg, width: 0.25, batch_size: 16, max_epochs: 1, augment: false}
  - name: cv_summary
    kind: cv_summary
    inputs: [cv]
  - name: audit
    kind: audit
    inputs: [tournament, cv_summary]
  - name: report
    kind: report
    inputs: [train, tournament, cv_summary, split, ingest, slice, audit]
";

/// The rows of the Markdown table that follows `## heading`, as cells.
fn markdown_table(md: &str, heading: &str) -> Vec<Vec<String>> {
    let section = md
        .split(&format!("## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no section {heading}"));
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn pct(v: &serde_json::Value) -> String {
    format!("{:.1}", 100.0 * v.as_f64().unwrap())
}

#[test]
fn the_report_reads_back_to_its_artifacts_and_renders_with_every_image() {
    let p = Project::new(&(util::tiny_data_path(6, 3) + STAGES));
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let md = String::from_utf8(p.output_file("report", "report", "report.md")).unwrap();
    let html = String::from_utf8(p.output_file("report", "report", "report.html")).unwrap();

    let board = p.output_json("tournament", "tournament", "leaderboard.json");
    let rows = markdown_table(&md, "Leaderboard");
    let entries = board["entries"].as_array().unwrap();
    assert_eq!(rows.len(), entries.len());
    for (row, e) in rows.iter().zip(entries) {
        assert_eq!(row[0], e["member"].as_str().unwrap());
        assert_eq!(row[1], e["trainable_parameters"].to_string());
        assert_eq!(row[2], e["multiply_adds_per_segment"].to_string());
        assert_eq!(row[4], pct(&e["val_segment_accuracy"]));
        assert_eq!(row[6], pct(&e["test_segment_accuracy"]));
        assert_eq!(row[8], pct(&e["test_track_accuracy"]));
    }
    let cv = p.output_json("cv_summary", "cv", "cv.json");
    let rows = markdown_table(&md, "Cross-validation");
    for mode in cv["modes"].as_array().unwrap() {
        let name = mode["mode"].as_str().unwrap();
        let mean = rows
            .iter()
            .find(|r| r[0] == name && r[1] == "mean ± std")
            .unwrap_or_else(|| panic!("no mean row for {name}"));
        let m = &mode["segment_accuracy"];
        assert_eq!(mean[5], format!("{} ± {}", pct(&m["mean"]), pct(&m["std"])));
    }
    // The audit's line and section are its artifact's, parsed back.
    let audit_digest = p.lock_field("audit", &["outputs", "audit"]).unwrap();
    let audit: serde_json::Value = serde_json::from_slice(&p.object(&audit_digest)).unwrap();
    let checks = audit["checks"].as_array().unwrap();
    let line = md
        .lines()
        .find(|l| l.starts_with("Leakage audit: "))
        .unwrap_or_else(|| panic!("no audit line in:\n{md}"));
    let failing: Vec<&str> = checks
        .iter()
        .filter(|c| c["holds"] == false)
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let verdict = if failing.is_empty() {
        format!("all {} invariants hold.", checks.len())
    } else {
        format!(
            "{} of {} invariants fail: {}.",
            failing.len(),
            checks.len(),
            failing.join(", ")
        )
    };
    let replicas: Vec<&str> = audit["replica_stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let mut expected = format!("Leakage audit: {verdict}");
    if !replicas.is_empty() {
        expected.push_str(&format!(
            " Leaky on purpose, listed and not counted: {}.",
            replicas.join(", ")
        ));
    }
    assert_eq!(line, expected);
    assert_eq!(audit["holds"], true, "{audit}");
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    assert!(html.contains(&format!("<p>{}</p>", expected.replace("'", "&#39;"))));
    let rows = markdown_table(&md, "Leakage audit");
    assert_eq!(rows.len(), checks.len());
    for (row, c) in rows.iter().zip(checks) {
        assert_eq!(row[0], c["title"].as_str().unwrap());
        assert_eq!(row[1], if c["holds"] == true { "holds" } else { "FAILS" });
        assert_eq!(row[2], c["checked"].to_string());
    }
    assert!(
        md.contains(&format!("`audit`, digest {}", &audit_digest[..12])),
        "{md}"
    );

    // Every digest the report cites is the start of an output digest in the lock.
    let lock = p.lock();
    let cited: Vec<&str> = md
        .match_indices("digest ")
        .map(|(i, _)| &md[i + 7..i + 19])
        .collect();
    assert!(cited.len() >= 8, "{cited:?}");
    for d in &cited {
        assert!(
            lock.contains(&format!(": {d}")),
            "{d} is no artifact of the lock"
        );
    }

    // `export` copies the same bytes out of the store; a stage with two outputs needs --output.
    let out = p.path().join("exported");
    let export = p.run(&["export", "report", "--to", out.to_str().unwrap()]);
    assert_eq!(export.code, 0, "{}", export.all());
    assert_eq!(std::fs::read_to_string(out.join("report.md")).unwrap(), md);
    assert_eq!(
        std::fs::read_to_string(out.join("report.html")).unwrap(),
        html
    );
    let ambiguous = p.run(&["export", "ingest", "--to", out.to_str().unwrap()]);
    assert_eq!(ambiguous.code, 2, "{}", ambiguous.all());
    assert!(ambiguous.stderr.contains("--output"), "{}", ambiguous.all());

    // Rendering: two training curves and the champion's heatmap, each decoded by the browser.
    let figures = html.matches("<img ").count();
    assert_eq!(figures, 3);
    let (title, screenshot) = render(&p.path().join("rendered"), &html);
    assert_eq!(
        title,
        format!("images {figures} loaded {figures}"),
        "{title}"
    );
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
}

/// Renders a copy of the page with a probe that writes the image count and how many decoded into the title,
/// in headless Chromium; returns that title and the path of a screenshot.
fn render(dir: &Path, html: &str) -> (String, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let probe = "<script>window.addEventListener('load', () => { const all = [...document.images]; \
                 document.title = `images ${all.length} loaded ${all.filter(i => i.complete && i.naturalWidth > 0).length}`; });</script>";
    let page = dir.join("probe.html");
    std::fs::write(&page, html.replace("</body>", &format!("{probe}</body>"))).unwrap();
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect(
            "headless Chromium is needed for this test: apt-get install chromium (.ci/run does)",
        );
    let base = |extra: &[String]| {
        let out = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=10000",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let dom = String::from_utf8(base(&["--dump-dom".to_string()]).stdout).unwrap();
    let title = dom
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or("")
        .to_string();
    let shot = dir.join("report.png");
    base(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1200,3000".to_string(),
    ]);
    (title, shot)
}
