//! Charts as standalone SVG documents: a model's training curve and a confusion-matrix heatmap. They are
//! artifacts, content-hashed and compared bit for bit, so the same input gives the same bytes on every
//! machine.
//!
//! Text layout. An SVG's text is drawn by whoever views it, in whatever face its `sans-serif` resolves to
//! there, so no font file shipped here could make the layout exact for every viewer. plotters is therefore
//! built without `ttf` (fonts looked up through the machine's fontconfig: the layout would follow the
//! machine) and without `ab_glyph` (metrics of a font file we would ship, register process-wide and keep in
//! step with the code fingerprint, which hashes `.rs` files only, for no better fit in a viewer using
//! another face). Its built-in estimate is then arithmetic on the text's length, the same everywhere. The
//! room this module leaves for its own labels comes from [`text_width`], a deliberately wide per-character
//! estimate, so labels fit in the wide common sans-serif faces (DejaVu Sans) and with room to spare in
//! narrower ones (Liberation Sans, Arial, Helvetica).
//!
//! Numbers. plotters rounds every coordinate to an integer pixel before the SVG backend prints it, through
//! plain IEEE arithmetic. Tick positions and their labels are chosen here with comparisons, integer
//! arithmetic and decimal parsing, never a logarithm or power whose last bit may differ between math
//! libraries, and plotters is handed them as fixed key points instead of computing its own.

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One epoch of a training history, as far as the curve shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochScores {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_track_accuracy: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("{0}")]
    Invalid(String),
    #[error("drawing the chart: {0}")]
    Drawing(String),
}

fn drawing(e: impl std::fmt::Display) -> ChartError {
    ChartError::Drawing(e.to_string())
}

const FONT: &str = "sans-serif";
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(230, 115, 0);
const VAL_TRACKS: RGBColor = RGBColor(44, 150, 44);
const MARKER: RGBColor = RGBColor(110, 110, 110);
const INK: RGBColor = RGBColor(33, 33, 33);
const GRID: RGBColor = RGBColor(225, 225, 225);
/// The darkest heatmap shade: a full row in one cell.
const HEAT: RGBColor = RGBColor(8, 48, 107);

/// The width, in pixels, that `text` takes at plotters font size `size` (drawn at `size / 1.24` px, as
/// plotters' SVG backend writes it), rounded up. Per-character advances are upper bounds of DejaVu Sans'
/// (the widest of the common sans-serif faces); anything outside ASCII counts as a full em.
pub fn text_width(text: &str, size: f64) -> i32 {
    let ems: f64 = text
        .chars()
        .map(|c| match c {
            ' ' => 0.32,
            'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '!' | '|' | 'I' => 0.3,
            'f' | 't' | 'r' | '(' | ')' | '[' | ']' | '{' | '}' | '/' | '\\' | '-' => 0.45,
            'm' | 'M' | 'w' | 'W' | '%' | '@' => 1.0,
            '0'..='9' | 'a'..='z' | '_' => 0.64,
            'A'..='Z' | '&' => 0.8,
            c if c.is_ascii() => 0.84,
            _ => 1.0,
        })
        .sum();
    (ems * size / 1.24).ceil() as i32
}

/// Control characters would make the document invalid XML; everything else plotters escapes itself.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An axis: its span, and the ticks on it with their labels. It is a plotters coordinate of its own, so that
/// plotters draws exactly these ticks, labelled with exactly these strings.
#[derive(Clone)]
struct Ticks {
    values: Vec<f64>,
    labels: Vec<String>,
    lo: f64,
    hi: f64,
}

impl Ranged for Ticks {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    /// plotters' own linear map for `f64` axes, in the same operations.
    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let fraction = (value - self.lo) / (self.hi - self.lo);
        let length = limit.1 - limit.0;
        if length == 0 || !fraction.is_finite() {
            return limit.0;
        }
        if length > 0 {
            limit.0 + (f64::from(length) * fraction + 1e-3).floor() as i32
        } else {
            limit.0 + (f64::from(length) * fraction - 1e-3).ceil() as i32
        }
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.values.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Ticks {
    fn format_ext(&self, value: &f64) -> String {
        self.values
            .iter()
            .position(|v| v == value)
            .map(|i| self.labels[i].clone())
            .unwrap_or_default()
    }
}

/// `n × 10^exponent` as a decimal string: exact, whatever the float it is later parsed into.
fn decimal(n: i64, exponent: i32) -> String {
    if exponent >= 0 {
        if n == 0 {
            return "0".into();
        }
        if exponent > 6 {
            return format!("{n}e{exponent}");
        }
        return format!("{n}{}", "0".repeat(exponent as usize));
    }
    let places = exponent.unsigned_abs() as usize;
    let digits = n.unsigned_abs().to_string();
    let padded = format!("{digits:0>width$}", width = places + 1);
    let (whole, frac) = padded.split_at(padded.len() - places);
    format!("{}{whole}.{frac}", if n < 0 { "-" } else { "" })
}

/// Ticks at multiples of 1, 2 or 5 × 10^k covering `[lo, hi]` in at most `max_intervals` steps. Each tick's
/// value is its label parsed, so labels and positions agree exactly.
fn decimal_ticks(lo: f64, hi: f64, max_intervals: f64) -> Result<Ticks, ChartError> {
    let span = hi - lo;
    if !(lo.is_finite() && hi.is_finite() && span.is_finite() && span > 0.0) {
        return Err(ChartError::Invalid(format!("no axis spans [{lo}, {hi}]")));
    }
    let too_wide = || ChartError::Invalid(format!("no axis spans [{lo}, {hi}]"));
    let parse = |s: &str| s.parse::<f64>().map_err(|_| too_wide());
    for exponent in -300..=300 {
        for mantissa in [1i64, 2, 5] {
            let step = parse(&format!("{mantissa}e{exponent}"))?;
            if step == 0.0 || span / step > max_intervals {
                continue;
            }
            let first = (lo / step).floor() as i64;
            let last = (hi / step).ceil() as i64;
            let labels: Vec<String> = (first..=last)
                .map(|k| decimal(k * mantissa, exponent))
                .collect();
            let values = labels
                .iter()
                .map(|l| parse(l))
                .collect::<Result<Vec<f64>, _>>()?;
            let (lo, hi) = (values[0], values[values.len() - 1]);
            return Ok(Ticks {
                values,
                labels,
                lo,
                hi,
            });
        }
    }
    Err(too_wide())
}

/// Epoch ticks: multiples of 1, 2 or 5 × 10^k, at most about a dozen, within the epochs run.
fn epoch_ticks(first: usize, last: usize) -> Ticks {
    let span = last - first;
    let mut step = 1usize;
    'search: for scale in [1usize, 10, 100, 1_000, 10_000, 100_000] {
        for m in [1usize, 2, 5] {
            step = m * scale;
            if span / step <= 12 {
                break 'search;
            }
        }
    }
    let mut epochs: Vec<usize> = (first.div_ceil(step) * step..=last).step_by(step).collect();
    if epochs.is_empty() {
        epochs.push(first);
    }
    let (lo, hi) = if first == last {
        (first as f64 - 1.0, last as f64 + 1.0)
    } else {
        (first as f64, last as f64)
    };
    Ticks {
        values: epochs.iter().map(|&e| e as f64).collect(),
        labels: epochs.iter().map(|e| e.to_string()).collect(),
        lo,
        hi,
    }
}

fn percent_ticks() -> Ticks {
    let values = vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
    Ticks {
        labels: ["0%", "20%", "40%", "60%", "80%", "100%"]
            .map(String::from)
            .to_vec(),
        values,
        lo: 0.0,
        hi: 1.0,
    }
}

/// One line of a panel. Points with a non-finite value break the line and are not drawn.
struct Line<'a> {
    label: &'a str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Runs of consecutive finite points: a diverged epoch leaves a gap instead of a spike to the border.
fn finite_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(x, y) in points {
        if y.is_finite() {
            if let Some(run) = runs.last_mut() {
                run.push((x, y));
            }
        } else if runs.last().is_some_and(|r| !r.is_empty()) {
            runs.push(Vec::new());
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

struct Panel<'a> {
    caption: &'a str,
    y_desc: &'a str,
    y: Ticks,
    lines: Vec<Line<'a>>,
    /// The best epoch, and the value circled on it (the score early stopping chose by).
    best: (f64, Option<f64>),
    /// Grey lines under the legend: the scores at the best epoch.
    notes: Vec<String>,
}

/// Width of the column beside each plot that holds its legend: outside the plot, so it never hides a line.
const LEGEND_WIDTH: u32 = 210;

/// Room left of a plot for its tick labels and axis title.
fn y_label_room(y: &Ticks) -> i32 {
    y.labels
        .iter()
        .map(|l| text_width(l, 14.0))
        .max()
        .unwrap_or(0)
        + 34
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    x: &Ticks,
    panel: &Panel,
    y_room: i32,
) -> Result<(), ChartError> {
    let y = &panel.y;
    let (plot, side) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(LEGEND_WIDTH));
    let mut chart = ChartBuilder::on(&plot)
        .caption(panel.caption, (FONT, 17).into_font().color(&INK))
        .margin_top(4)
        .margin_left(8)
        .margin_right(16)
        .margin_bottom(4)
        .x_label_area_size(44)
        .y_label_area_size(y_room)
        .build_cartesian_2d(x.clone(), y.clone())
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(panel.y_desc)
        .label_style((FONT, 14).into_font().color(&INK))
        .axis_desc_style((FONT, 15).into_font().color(&INK))
        .bold_line_style(GRID)
        .axis_style(INK.mix(0.6))
        .draw()
        .map_err(drawing)?;

    let (best, best_value) = panel.best;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(best, y.lo), (best, y.hi)],
            MARKER.stroke_width(1),
        )))
        .map_err(drawing)?;
    for line in &panel.lines {
        let style = line.color.stroke_width(2);
        chart
            .draw_series(
                finite_runs(&line.points)
                    .into_iter()
                    .map(|run| PathElement::new(run, style)),
            )
            .map_err(drawing)?;
        chart
            .draw_series(
                line.points
                    .iter()
                    .filter(|(_, v)| v.is_finite())
                    .map(|&p| Circle::new(p, 2, line.color.filled())),
            )
            .map_err(drawing)?;
    }
    let circled = best_value.filter(|v| v.is_finite());
    if let Some(v) = circled {
        chart
            .draw_series(std::iter::once(Circle::new(
                (best, v),
                6,
                MARKER.stroke_width(2),
            )))
            .map_err(drawing)?;
    }

    // The legend, level with the top of the plot.
    let label = |h: HPos| {
        (FONT, 14)
            .into_font()
            .color(&INK)
            .pos(Pos::new(h, VPos::Center))
    };
    let mut row = 48;
    for line in &panel.lines {
        side.draw(&PathElement::new(
            vec![(4, row), (30, row)],
            line.color.stroke_width(2),
        ))
        .map_err(drawing)?;
        side.draw(&Circle::new((17, row), 2, line.color.filled()))
            .map_err(drawing)?;
        side.draw(&Text::new(line.label, (38, row), label(HPos::Left)))
            .map_err(drawing)?;
        row += 22;
    }
    side.draw(&PathElement::new(
        vec![(17, row - 9), (17, row + 9)],
        MARKER.stroke_width(1),
    ))
    .map_err(drawing)?;
    if circled.is_some() {
        side.draw(&Circle::new((17, row), 6, MARKER.stroke_width(2)))
            .map_err(drawing)?;
    }
    side.draw(&Text::new(
        format!("best epoch {}", best as usize),
        (38, row),
        label(HPos::Left),
    ))
    .map_err(drawing)?;
    for note in &panel.notes {
        row += 20;
        side.draw(&Text::new(
            note.as_str(),
            (38, row),
            (FONT, 13)
                .into_font()
                .color(&MARKER)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(drawing)?;
    }
    Ok(())
}

/// `0.123` as `12.3%`; a non-finite score as `n/a`.
fn percent(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}%", 100.0 * v)
    } else {
        "n/a".into()
    }
}

fn plain(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "n/a".into()
    }
}

/// A training history as an SVG document: loss (top) and accuracy (bottom) per epoch, train and
/// validation, with validation's track-level accuracy, and `best_epoch` (the one whose weights were kept)
/// marked in both, its scores beside the legend. Non-finite values leave gaps. Errors on an empty history,
/// epochs that do not increase, or a best epoch the history does not hold.
pub fn training_curve(
    title: &str,
    epochs: &[EpochScores],
    best_epoch: usize,
) -> Result<String, ChartError> {
    let (Some(first), Some(last)) = (epochs.first(), epochs.last()) else {
        return Err(ChartError::Invalid(
            "a training curve needs at least one epoch".into(),
        ));
    };
    if let Some(w) = epochs.windows(2).find(|w| w[1].epoch <= w[0].epoch) {
        return Err(ChartError::Invalid(format!(
            "epochs must increase: epoch {} follows epoch {}",
            w[1].epoch, w[0].epoch
        )));
    }
    let best = epochs
        .iter()
        .find(|e| e.epoch == best_epoch)
        .ok_or_else(|| {
            ChartError::Invalid(format!(
                "best epoch {best_epoch} is not among epochs {}..={}",
                first.epoch, last.epoch
            ))
        })?;

    let x = epoch_ticks(first.epoch, last.epoch);
    let losses: Vec<f64> = epochs
        .iter()
        .flat_map(|e| [e.train_loss, e.val_loss])
        .filter(|v| v.is_finite())
        .collect();
    // Fitted to the losses rather than from zero: a short or stalled run moves its loss by a few
    // hundredths, which a zero-based axis flattens into one line.
    let (loss_lo, loss_hi) = match (
        losses.iter().copied().reduce(f64::min),
        losses.iter().copied().reduce(f64::max),
    ) {
        (Some(lo), Some(hi)) if hi > lo => (lo, hi),
        (Some(v), _) => {
            let half = (v.abs() * 0.1).max(0.5);
            (v - half, v + half)
        }
        _ => (0.0, 1.0),
    };
    let series = |f: fn(&EpochScores) -> f64| -> Vec<(f64, f64)> {
        epochs.iter().map(|e| (e.epoch as f64, f(e))).collect()
    };
    let best_x = best.epoch as f64;
    let loss = Panel {
        caption: "loss",
        y_desc: "cross-entropy",
        y: decimal_ticks(loss_lo, loss_hi, 6.0)?,
        lines: vec![
            Line {
                label: "train",
                color: TRAIN,
                points: series(|e| e.train_loss),
            },
            Line {
                label: "validation",
                color: VAL,
                points: series(|e| e.val_loss),
            },
        ],
        best: (best_x, None),
        notes: vec![
            format!("train {}", plain(best.train_loss)),
            format!("validation {}", plain(best.val_loss)),
        ],
    };
    let accuracy = Panel {
        caption: "accuracy",
        y_desc: "correct",
        y: percent_ticks(),
        lines: vec![
            Line {
                label: "train, segments",
                color: TRAIN,
                points: series(|e| e.train_accuracy),
            },
            Line {
                label: "validation, segments",
                color: VAL,
                points: series(|e| e.val_accuracy),
            },
            Line {
                label: "validation, tracks",
                color: VAL_TRACKS,
                points: series(|e| e.val_track_accuracy),
            },
        ],
        best: (best_x, Some(best.val_accuracy)),
        notes: vec![
            format!("validation {} segments", percent(best.val_accuracy)),
            format!("validation {} tracks", percent(best.val_track_accuracy)),
        ],
    };
    // One left margin for both plots, so their epochs line up.
    let y_room = y_label_room(&loss.y).max(y_label_room(&accuracy.y));

    let title = printable(title);
    let width = (640 + LEGEND_WIDTH).max(text_width(&title, 22.0) as u32 + 40);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let body = root
            .titled(&title, (FONT, 22).into_font().color(&INK))
            .map_err(drawing)?;
        let (top, bottom) = body.split_vertically(body.dim_in_pixel().1 / 2);
        draw_panel(&top, &x, &loss, y_room)?;
        draw_panel(&bottom, &x, &accuracy, y_room)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// White to [`HEAT`] as `share` goes from 0 to 1.
fn shade(share: f64) -> RGBColor {
    let mix = |c: u8| (255.0 - share * (255.0 - f64::from(c))).round() as u8;
    RGBColor(mix(HEAT.0), mix(HEAT.1), mix(HEAT.2))
}

/// A confusion matrix as an SVG heatmap: `counts[actual][predicted]` written in its cell, the cell shaded by
/// its share of the actual class' row (so rare classes read as well as common ones), class names along
/// both axes. Errors when there are no classes or the counts are not classes × classes.
pub fn confusion_heatmap(
    classes: &[String],
    counts: &[Vec<u64>],
    title: &str,
) -> Result<String, ChartError> {
    let n = classes.len();
    if n == 0 {
        return Err(ChartError::Invalid(
            "a confusion heatmap needs at least one class".into(),
        ));
    }
    if counts.len() != n {
        return Err(ChartError::Invalid(format!(
            "{} rows of counts for {n} classes",
            counts.len()
        )));
    }
    if let Some((i, row)) = counts.iter().enumerate().find(|(_, r)| r.len() != n) {
        return Err(ChartError::Invalid(format!(
            "row {i} ({}) holds {} counts for {n} classes",
            classes[i],
            row.len()
        )));
    }
    let names: Vec<String> = classes.iter().map(|c| printable(c)).collect();
    let title = printable(title);

    const LABEL: f64 = 14.0;
    const PAD: i32 = 16;
    let cell: i32 = (560 / n as i32).clamp(28, 72);
    let side = cell * n as i32;
    let widest_name = names
        .iter()
        .map(|c| text_width(c, LABEL))
        .max()
        .unwrap_or(0);
    let digits = counts
        .iter()
        .flatten()
        .map(|c| c.to_string().len())
        .max()
        .unwrap_or(1);
    // A digit is at most 0.64 em, drawn at size / 1.24 px.
    let count_size = (f64::from(cell - 8) * 1.24 / (0.64 * digits as f64))
        .floor()
        .min(16.0)
        .min(f64::from(cell) * 0.5)
        .max(6.0);
    let upright_x_labels = widest_name <= cell - 6;
    let x_label_height = if upright_x_labels {
        22
    } else {
        widest_name + 10
    };

    let title_height = 44;
    let axis_title = 26;
    let left = PAD + axis_title + widest_name + 10;
    let top = title_height;
    let note = "rows: actual class; columns: predicted class; shade: share of the row";
    let width = (left + side + PAD)
        .max(text_width(&title, 20.0) + 2 * PAD)
        .max(text_width(note, 13.0) + 2 * PAD);
    let height = top + side + x_label_height + axis_title + 24 + PAD;

    let text = |size: f64, color: &RGBColor, h: HPos, v: VPos| {
        (FONT, size).into_font().color(color).pos(Pos::new(h, v))
    };
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        root.draw(&Text::new(
            title.as_str(),
            (width / 2, 14),
            text(20.0, &INK, HPos::Center, VPos::Top),
        ))
        .map_err(drawing)?;
        for (i, row) in counts.iter().enumerate() {
            let total: u128 = row.iter().map(|&c| u128::from(c)).sum();
            let y0 = top + i as i32 * cell;
            for (j, &count) in row.iter().enumerate() {
                let x0 = left + j as i32 * cell;
                let share = if total == 0 {
                    0.0
                } else {
                    count as f64 / total as f64
                };
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    shade(share).filled(),
                ))
                .map_err(drawing)?;
                let ink = if share > 0.5 { WHITE } else { INK };
                root.draw(&Text::new(
                    count.to_string(),
                    (x0 + cell / 2, y0 + cell / 2),
                    text(count_size, &ink, HPos::Center, VPos::Center),
                ))
                .map_err(drawing)?;
            }
        }
        root.draw(&Rectangle::new(
            [(left, top), (left + side, top + side)],
            INK.mix(0.5).stroke_width(1),
        ))
        .map_err(drawing)?;

        for (i, name) in names.iter().enumerate() {
            let middle = i as i32 * cell + cell / 2;
            root.draw(&Text::new(
                name.as_str(),
                (left - 8, top + middle),
                text(LABEL, &INK, HPos::Right, VPos::Center),
            ))
            .map_err(drawing)?;
            let below = top + side + 6;
            let style = if upright_x_labels {
                text(LABEL, &INK, HPos::Center, VPos::Top)
            } else {
                // Read bottom to top, ending just under the column.
                text(LABEL, &INK, HPos::Right, VPos::Center).transform(FontTransform::Rotate270)
            };
            root.draw(&Text::new(name.as_str(), (left + middle, below), style))
                .map_err(drawing)?;
        }
        let axis_style = |h: HPos| text(15.0, &INK, h, VPos::Center);
        root.draw(&Text::new(
            "predicted",
            (
                left + side / 2,
                top + side + x_label_height + axis_title / 2,
            ),
            axis_style(HPos::Center),
        ))
        .map_err(drawing)?;
        root.draw(&Text::new(
            "actual",
            (PAD + axis_title / 2, top + side / 2),
            axis_style(HPos::Center).transform(FontTransform::Rotate270),
        ))
        .map_err(drawing)?;
        root.draw(&Text::new(
            note,
            (PAD, height - PAD),
            text(13.0, &MARKER, HPos::Left, VPos::Bottom),
        ))
        .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests;
