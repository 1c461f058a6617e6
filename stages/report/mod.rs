//! Stage `report`: the study's results as one self-contained HTML page (every chart inline) and a Markdown
//! summary, every number read from an artifact and shown beside the digest of the artifact it came from.
//!
//! Inputs: every `model/` folder (training curves), `tournament/` (leaderboard, ablation, the champion's test
//! evaluation), `cv/` (both cross-validations), any `transfer/` results, any `audit` (the leakage audit's
//! verdict, in the headline and a section of its own), and `split`, `tracks`, `quarantine`, `segments` (the
//! data summary). Output `report/`: `report.html`, `report.md`.
//!
//! Nothing here computes a score: the page only arranges what upstream stages wrote, so a number on it can
//! be checked against its artifact by digest. Inference latency is not on the page: it is a property of the
//! machine that runs `genrelab efficiency`, never an artifact.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use genrelab_contract::{
    read_json, Determinism, InputArtifact, Lineage, Need, StageContext, StageError, StageKind,
    StageParams, StageReport, TypedStage,
};

use crate::audit::AuditReport;
use crate::charts;
use crate::common::tables::{Quarantine, SegmentTable, SplitTable, TrackTable, SPLITS};
use crate::cv::summary::{CvSummary, MeanStd};
use crate::tournament::{Champion, Leaderboard};
use crate::transfer::TransferResult;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {}

impl StageParams for Params {}

/// The first 12 hex digits of a digest: enough to find the artifact with `genrelab lineage`.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn mean_std(m: &MeanStd) -> String {
    format!("{} ± {}", pct(m.mean), pct(m.std))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table both ways: HTML rows for the page, pipe rows for the Markdown summary. Cells are plain text.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn html(&self) -> String {
        let mut out = String::from("<table>\n<tr>");
        for h in &self.header {
            let _ = write!(out, "<th>{}</th>", escape(h));
        }
        out.push_str("</tr>\n");
        for row in &self.rows {
            out.push_str("<tr>");
            for cell in row {
                let _ = write!(out, "<td>{}</td>", escape(cell));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
        out
    }

    fn markdown(&self) -> String {
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(&self.header);
        out.push_str(&line(&vec!["---".to_string(); self.header.len()]));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// The page and the summary, built section by section in the same order.
#[derive(Default)]
struct Document {
    html: String,
    markdown: String,
}

impl Document {
    fn heading(&mut self, text: &str) {
        let _ = writeln!(self.html, "<h2>{}</h2>", escape(text));
        let _ = writeln!(self.markdown, "\n## {text}\n");
    }

    fn paragraph(&mut self, text: &str) {
        let _ = writeln!(self.html, "<p>{}</p>", escape(text));
        let _ = writeln!(self.markdown, "{text}\n");
    }

    fn source(&mut self, what: &str, input: &InputArtifact) {
        let text = format!(
            "Source: {what} from `{}`, digest {}.",
            input.stage,
            short(&input.digest)
        );
        let _ = writeln!(
            self.html,
            "<p class=\"source\">Source: {} from <code>{}</code>, digest <code>{}</code>.</p>",
            escape(what),
            escape(&input.stage),
            short(&input.digest)
        );
        let _ = writeln!(self.markdown, "{text}\n");
    }

    fn table(&mut self, table: &Table) {
        self.html.push_str(&table.html());
        self.markdown.push_str(&table.markdown());
        self.markdown.push('\n');
    }

    /// An SVG inline as a data URI, so the page needs no file beside it; the summary names the figure only.
    fn figure(&mut self, svg: &str, caption: &str) {
        let data = base64::engine::general_purpose::STANDARD.encode(svg.as_bytes());
        let _ = writeln!(
            self.html,
            "<figure><img alt=\"{0}\" src=\"data:image/svg+xml;base64,{data}\"><figcaption>{0}</figcaption></figure>",
            escape(caption)
        );
        let _ = writeln!(self.markdown, "*Figure (in report.html): {caption}.*\n");
    }
}

fn one<'a>(ctx: &'a StageContext, artifact: &str) -> Result<&'a InputArtifact, StageError> {
    match ctx.inputs(artifact) {
        [input] => Ok(input),
        found => Err(StageError::bad_input(
            artifact,
            format!("the report needs exactly one, got {}", found.len()),
        )),
    }
}

fn chart_error(what: &str) -> impl Fn(charts::ChartError) -> StageError + '_ {
    move |e| StageError::Invalid(format!("{what}: {e}"))
}

fn run(_: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    let tournament = one(ctx, "tournament")?;
    let cv = one(ctx, "cv")?;
    let split_in = one(ctx, "split")?;
    let tracks_in = one(ctx, "tracks")?;
    let quarantine_in = one(ctx, "quarantine")?;
    let segments_in = one(ctx, "segments")?;
    let board: Leaderboard = read_json(&tournament.path.join("leaderboard.json"), "tournament")?;
    let champion: Champion = read_json(&tournament.path.join("champion.json"), "tournament")?;
    let cv_summary: CvSummary = read_json(&cv.path.join("cv.json"), "cv")?;
    let split: SplitTable = read_json(&split_in.path, "split")?;
    let tracks: TrackTable = read_json(&tracks_in.path, "tracks")?;
    let quarantine: Quarantine = read_json(&quarantine_in.path, "quarantine")?;
    let segments: SegmentTable = read_json(&segments_in.path, "segments")?;
    let champion_entry = board
        .entries
        .iter()
        .find(|e| e.member == board.champion)
        .ok_or_else(|| {
            StageError::bad_input("tournament", "the champion is not on its own leaderboard")
        })?;

    let mut doc = Document::default();
    let mut headline = vec![format!(
        "Champion (chosen on validation): {}. Test accuracy {}% per segment, {}% per track.",
        board.champion,
        pct(champion_entry.test_segment_accuracy),
        pct(champion_entry.test_track_accuracy)
    )];
    let grouped = cv_summary
        .modes
        .iter()
        .find(|m| m.mode == crate::cv::Mode::Grouped);
    let replica = cv_summary
        .modes
        .iter()
        .find(|m| m.mode == crate::cv::Mode::StudyReplica);
    match (grouped, replica) {
        (Some(g), Some(r)) => headline.push(format!(
            "Grouped {}-fold cross-validation: {}% per segment; the study's replica on the same tracks: {}% ({:+.1} points).",
            g.folds.len(),
            mean_std(&g.segment_accuracy),
            mean_std(&r.segment_accuracy),
            100.0 * (r.segment_accuracy.mean - g.segment_accuracy.mean)
        )),
        (Some(g), None) => headline.push(format!(
            "Grouped {}-fold cross-validation: {}% per segment.",
            g.folds.len(),
            mean_std(&g.segment_accuracy)
        )),
        _ => {}
    }
    let mut transfer_headline = Vec::new();
    for input in ctx.inputs("transfer") {
        let t: TransferResult = read_json(&input.path.join("transfer.json"), "transfer")?;
        let scores: Vec<String> = t
            .methods
            .iter()
            .map(|m| format!("{} {}%", m.method, pct(m.test.segment.accuracy)))
            .collect();
        transfer_headline.push(format!(
            "Transfer to {} classes (test segments): {}.",
            t.classes.len(),
            scores.join(", ")
        ));
    }
    if transfer_headline.is_empty() {
        transfer_headline.push("Transfer evaluation: none in this pipeline.".to_string());
    }
    headline.extend(transfer_headline);
    let audits: Vec<(&InputArtifact, AuditReport)> = ctx
        .inputs("audit")
        .iter()
        .map(|input| Ok((input, read_json(&input.path, "audit")?)))
        .collect::<Result<_, StageError>>()?;
    headline.extend(audit_headline(&audits));

    doc.heading("Headline");
    for line in &headline {
        doc.paragraph(line);
    }
    doc.source("leaderboard.json", tournament);
    doc.source("cv.json", cv);
    for (input, _) in &audits {
        doc.source("the leakage audit", input);
    }
    audit_section(&mut doc, &audits);

    doc.heading("Leaderboard");
    doc.paragraph("Every member of the tournament, chosen on validation, each scored on test once after the choice. Accuracies in percent.");
    let mut table = Table::new(&[
        "member",
        "params",
        "MACs/segment",
        "best epoch",
        "val seg",
        "val track",
        "test seg",
        "test seg macro F1",
        "test track",
        "test track vote",
    ]);
    for e in &board.entries {
        table.row(vec![
            e.member.clone(),
            e.trainable_parameters.to_string(),
            e.multiply_adds_per_segment.to_string(),
            e.best_epoch.to_string(),
            pct(e.val_segment_accuracy),
            pct(e.val_track_accuracy),
            pct(e.test_segment_accuracy),
            format!("{:.3}", e.test_segment_macro_f1),
            pct(e.test_track_accuracy),
            pct(e.test_track_vote_accuracy),
        ]);
    }
    doc.table(&table);
    doc.source("leaderboard.json", tournament);

    doc.heading("Ablation: SpecAugment");
    let mut pairs: BTreeMap<String, [Option<f64>; 2]> = BTreeMap::new();
    for e in &board.entries {
        let name = serde_json::to_value(e.arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        pairs.entry(format!("{name} x{}", e.width)).or_default()[usize::from(e.augment)] =
            Some(e.test_segment_accuracy);
    }
    let mut table = Table::new(&[
        "model",
        "test seg without",
        "test seg with",
        "difference (points)",
    ]);
    for (model, [without, with]) in &pairs {
        let show = |v: &Option<f64>| v.map(pct).unwrap_or_default();
        let diff = match (without, with) {
            (Some(a), Some(b)) => format!("{:+.1}", 100.0 * (b - a)),
            _ => String::new(),
        };
        table.row(vec![model.clone(), show(without), show(with), diff]);
    }
    doc.table(&table);
    doc.source("leaderboard.json", tournament);

    doc.heading("Efficiency");
    doc.paragraph("Parameters and multiply-adds per segment are counted from layer shapes when each model is built. Inference latency depends on the machine, so it is measured by genrelab efficiency (which make reproduce runs) and never stored as an artifact.");
    let mut table = Table::new(&["member", "params", "MACs/segment", "test seg"]);
    for e in &board.entries {
        table.row(vec![
            e.member.clone(),
            e.trainable_parameters.to_string(),
            e.multiply_adds_per_segment.to_string(),
            pct(e.test_segment_accuracy),
        ]);
    }
    doc.table(&table);
    doc.source("leaderboard.json", tournament);

    doc.heading("The champion's confusion matrix");
    let heatmap = charts::confusion_heatmap(
        &champion.classes,
        &champion.test.segment.confusion,
        &format!("{}: test segments", champion.member),
    )
    .map_err(chart_error("confusion heatmap"))?;
    doc.figure(
        &heatmap,
        &format!(
            "{}: test segments, rows actual, columns predicted",
            champion.member
        ),
    );
    let mut table = Table::new(&["class", "precision", "recall", "F1", "support"]);
    for (class, s) in champion
        .classes
        .iter()
        .zip(&champion.test.segment.per_class)
    {
        table.row(vec![
            class.clone(),
            format!("{:.3}", s.precision),
            format!("{:.3}", s.recall),
            format!("{:.3}", s.f1),
            s.support.to_string(),
        ]);
    }
    doc.table(&table);
    doc.source("champion.json", tournament);

    doc.heading("Training curves");
    for model in ctx.inputs("model") {
        let path = model.path.join("curve.svg");
        let svg = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
        doc.figure(
            &svg,
            &format!("{}: loss and accuracy per epoch", model.stage),
        );
        doc.source("curve.svg", model);
    }

    doc.heading("Cross-validation");
    doc.paragraph("Grouped: folds of tracks (stratified, duplicates together), the scaler refitted on each fold's training part, early stopping on another fold, the held-out fold scored once. Study replica: folds of segments, one scaler on everything, each fold scored at the best epoch on the fold that chose it. Same train and val tracks, same network.");
    let mut table = Table::new(&[
        "mode",
        "fold",
        "best epoch",
        "held-out tracks",
        "of them also trained on",
        "seg acc",
        "seg macro F1",
        "track acc",
    ]);
    for m in &cv_summary.modes {
        for f in &m.folds {
            table.row(vec![
                m.mode.name().to_string(),
                (f.fold + 1).to_string(),
                f.best_epoch.to_string(),
                f.held_out_tracks.to_string(),
                f.held_out_tracks_also_trained_on.to_string(),
                pct(f.segment_accuracy),
                format!("{:.3}", f.segment_macro_f1),
                pct(f.track_accuracy),
            ]);
        }
        table.row(vec![
            m.mode.name().to_string(),
            "mean ± std".to_string(),
            String::new(),
            String::new(),
            String::new(),
            mean_std(&m.segment_accuracy),
            format!("{:.3}", m.segment_macro_f1.mean),
            mean_std(&m.track_accuracy),
        ]);
    }
    doc.table(&table);
    if let Some(gap) = cv_summary.replica_gap_segment_accuracy {
        doc.paragraph(&format!(
            "The replica reads {:.1} points {} the grouped estimate (the study reported 90.4 ± 0.7 by its method against 82.3 on held-out test).",
            100.0 * gap.abs(),
            if gap >= 0.0 { "above" } else { "below" }
        ));
    }
    doc.source("cv.json", cv);

    doc.heading("Transfer");
    let transfers = ctx.inputs("transfer");
    if transfers.is_empty() {
        doc.paragraph(
            "No transfer stage feeds this report, so there are no transfer scores to show.",
        );
    }
    for input in transfers {
        let t: TransferResult = read_json(&input.path.join("transfer.json"), "transfer")?;
        doc.paragraph(&format!(
            "{} (trained on the first corpus) on a second corpus of {} classes ({}): {} train and {} test segments, embeddings of {} values.",
            t.source,
            t.classes.len(),
            t.classes.join(", "),
            t.train_segments,
            t.test_segments,
            t.embedding_dim
        ));
        let mut table = Table::new(&[
            "method",
            "best epoch",
            "test seg",
            "test seg macro F1",
            "test track",
        ]);
        for m in &t.methods {
            table.row(vec![
                m.method.clone(),
                m.best_epoch.map(|e| e.to_string()).unwrap_or_default(),
                pct(m.test.segment.accuracy),
                format!("{:.3}", m.test.segment.macro_f1),
                pct(m.test.track_mean.accuracy),
            ]);
        }
        doc.table(&table);
        doc.source("transfer.json", input);
    }

    doc.heading("Data: split and quarantine");
    let mut table = Table::new(&["class", "train", "val", "test"]);
    let split_of: BTreeMap<&str, usize> = SPLITS
        .iter()
        .enumerate()
        .flat_map(|(k, s)| split.ids(*s).iter().map(move |id| (id.as_str(), k)))
        .collect();
    for class in &tracks.classes {
        let mut counts = [0usize; 3];
        for t in tracks.tracks.iter().filter(|t| &t.class == class) {
            if let Some(&k) = split_of.get(t.id.as_str()) {
                counts[k] += 1;
            }
        }
        table.row(
            std::iter::once(class.clone())
                .chain(counts.iter().map(usize::to_string))
                .collect(),
        );
    }
    doc.table(&table);
    doc.paragraph(&format!(
        "{} tracks ({} segments of {} samples); split method `{}`; {} duplicate-audio groups, each kept inside one split; {} tracks too short for a segment.",
        tracks.tracks.len(),
        segments.segments.len(),
        segments.segment_samples,
        split.method,
        split.duplicate_groups.len(),
        segments.short_tracks.len()
    ));
    doc.source("split", split_in);
    doc.source("segments", segments_in);
    let mut table = Table::new(&["quarantined file", "reason"]);
    for q in &quarantine.files {
        table.row(vec![q.path.clone(), q.reason.clone()]);
    }
    doc.table(&table);
    doc.source("quarantine", quarantine_in);
    doc.source("tracks", tracks_in);

    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>genrelab report</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<h1>genrelab report</h1>\n{}</body>\n</html>\n",
        doc.html
    );
    let markdown = format!("# genrelab report\n{}", doc.markdown);
    let dir = ctx.output_path("report")?;
    for (name, text) in [("report.html", &html), ("report.md", &markdown)] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| StageError::io(&path, e))?;
    }
    Ok(StageReport {
        lineage: Lineage::default(),
        summary: headline,
    })
}

/// The headline's audit line: `Leakage audit: all 11 invariants hold.`, or which fail.
fn audit_headline(audits: &[(&InputArtifact, AuditReport)]) -> Vec<String> {
    if audits.is_empty() {
        return vec!["Leakage audit: none in this pipeline.".to_string()];
    }
    audits
        .iter()
        .map(|(_, report)| {
            let mut line = format!("Leakage audit: {}.", report.headline());
            if !report.replica_stages.is_empty() {
                let stages: Vec<&str> = report.replica_stages.iter().map(String::as_str).collect();
                line.push_str(&format!(
                    " Leaky on purpose, listed and not counted: {}.",
                    stages.join(", ")
                ));
            }
            line
        })
        .collect()
}

/// One row per invariant: whether it holds, how much it examined, and the culprits.
fn audit_section(doc: &mut Document, audits: &[(&InputArtifact, AuditReport)]) {
    if audits.is_empty() {
        return;
    }
    doc.heading("Leakage audit");
    doc.paragraph("Each invariant proven from the manifests and lineage records of the stages behind these results (nothing re-run): `genrelab audit` prints the same. Failures of stages that reproduce the study's leaks on purpose are listed, not counted.");
    for (input, report) in audits {
        doc.paragraph(&format!(
            "{} ({} stages audited): {}.",
            report.target.as_deref().unwrap_or("every stage"),
            report.stages.len(),
            report.verdict
        ));
        let mut table = Table::new(&[
            "invariant",
            "verdict",
            "checked",
            "culprits",
            "leaky on purpose",
        ]);
        for check in &report.checks {
            let culprits = if check.failures.is_empty() {
                "none".to_string()
            } else {
                check.failures.join("; ")
            };
            let replica = if check.replica_stages.is_empty() {
                "none".to_string()
            } else {
                check
                    .replica_stages
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            table.row(vec![
                check.title.clone(),
                if check.holds { "holds" } else { "FAILS" }.to_string(),
                check.checked.to_string(),
                culprits,
                replica,
            ]);
        }
        doc.table(&table);
        doc.source("audit", input);
    }
}

const STYLE: &str =
    "body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1em 0; }
img { max-width: 100%; }
.source { color: #666; font-size: 0.85em; }
code { font-size: 0.9em; }
";

const NEEDS: &[Need] = &[
    Need::many("model"),
    Need::one("tournament"),
    Need::one("cv"),
    Need::one("split"),
    Need::one("tracks"),
    Need::one("quarantine"),
    Need::one("segments"),
    Need::any("transfer"),
    Need::any("audit"),
];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "report",
        about: "one self-contained HTML page and a Markdown summary of every result, each number beside its artifact's digest",
        needs: NEEDS,
        outputs: &["report/"],
        code_dirs: &["report", "charts", "cv", "tournament", "transfer", "train", "common", "audit"],
        determinism: Determinism::Exact,
        run,
    })
}
