//! The report's building blocks: escaping, and tables that read back the same from HTML and Markdown.

use super::*;

#[test]
fn escape_neutralises_markup() {
    assert_eq!(
        escape("<script>\"a\" & 'b'</script>"),
        "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
    );
}

#[test]
fn a_table_renders_the_same_cells_in_html_and_markdown() {
    let mut t = Table::new(&["member", "acc"]);
    t.row(vec!["train[arch=unet]".into(), "63.5".into()]);
    t.row(vec!["a|b <x>".into(), "1.0".into()]);
    let md = t.markdown();
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines[0], "| member | acc |");
    assert_eq!(lines[1], "| --- | --- |");
    assert_eq!(lines[2], "| train[arch=unet] | 63.5 |");
    assert_eq!(lines[3], "| a\\|b <x> | 1.0 |");
    let html = t.html();
    assert!(html.contains("<td>train[arch=unet]</td><td>63.5</td>"));
    assert!(html.contains("<td>a|b &lt;x&gt;</td>"));
}

#[test]
fn a_figure_is_inline_and_decodes_to_the_svg() {
    let mut doc = Document::default();
    let svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"2\" height=\"2\"></svg>";
    doc.figure(svg, "tiny");
    let start = doc.html.find("base64,").unwrap() + "base64,".len();
    let end = start + doc.html[start..].find('"').unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&doc.html[start..end])
        .unwrap();
    assert_eq!(decoded, svg.as_bytes());
    assert!(doc.markdown.contains("tiny"));
}

#[test]
fn percentages_and_spreads_have_one_decimal() {
    assert_eq!(pct(0.635), "63.5");
    assert_eq!(
        mean_std(&MeanStd {
            mean: 0.9044,
            std: 0.0068
        }),
        "90.4 ± 0.7"
    );
}

fn audit_report(failing: &[&str], replica: &[&str]) -> AuditReport {
    let checks = ["split-tracks", "scaler-fit", "cv-grouped"]
        .iter()
        .map(|id| crate::audit::Check {
            id: id.to_string(),
            title: format!("the {id} invariant"),
            holds: !failing.contains(id),
            checked: 2,
            failures: if failing.contains(id) {
                vec![format!("stage: breaks {id}")]
            } else {
                Vec::new()
            },
            replica_failures: Vec::new(),
            replica_stages: Default::default(),
        })
        .collect();
    AuditReport {
        target: Some("audit".into()),
        stages: vec!["a".into(), "b".into()],
        holds: failing.is_empty(),
        verdict: "as computed".into(),
        replica_stages: replica.iter().map(|s| s.to_string()).collect(),
        checks,
    }
}

#[test]
fn the_audit_line_says_all_hold_or_names_what_fails() {
    let input = InputArtifact {
        stage: "audit".into(),
        path: Default::default(),
        digest: "0123456789abcdef".into(),
    };
    assert_eq!(
        audit_headline(&[]),
        ["Leakage audit: none in this pipeline."]
    );
    assert_eq!(
        audit_headline(&[(&input, audit_report(&[], &[]))]),
        ["Leakage audit: all 3 invariants hold."]
    );
    assert_eq!(
        audit_headline(&[(&input, audit_report(&["scaler-fit"], &["cv_replica"]))]),
        ["Leakage audit: 1 of 3 invariants fail: scaler-fit. Leaky on purpose, listed and not counted: cv_replica."]
    );

    let mut doc = Document::default();
    audit_section(&mut doc, &[(&input, audit_report(&["scaler-fit"], &[]))]);
    assert!(
        doc.markdown.contains("## Leakage audit"),
        "{}",
        doc.markdown
    );
    assert!(
        doc.markdown
            .contains("| the scaler-fit invariant | FAILS | 2 | stage: breaks scaler-fit | none |"),
        "{}",
        doc.markdown
    );
    assert!(
        doc.markdown.contains("digest 0123456789ab"),
        "{}",
        doc.markdown
    );
    assert!(doc.html.contains("<td>FAILS</td>"), "{}", doc.html);
}
