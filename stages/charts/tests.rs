use super::*;

/// Lines drawn in `color` at data width: the plots' runs and the legend's swatches.
fn strokes(svg: &str, color: RGBColor) -> usize {
    let attrs = format!(
        "stroke=\"#{:02X}{:02X}{:02X}\" stroke-width=\"2\"",
        color.0, color.1, color.2
    );
    svg.lines()
        .filter(|l| l.starts_with("<polyline") && l.contains(&attrs))
        .count()
}

fn history(n: usize) -> Vec<EpochScores> {
    (1..=n)
        .map(|e| {
            let t = e as f64;
            EpochScores {
                epoch: e,
                train_loss: 2.3 / t,
                train_accuracy: 1.0 - 0.9 / t,
                val_loss: 2.1 / t + 0.05 * t,
                val_accuracy: 0.6 - 0.5 / t,
                val_track_accuracy: 0.7 - 0.5 / t,
            }
        })
        .collect()
}

fn classes(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn matrix(n: usize) -> Vec<Vec<u64>> {
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    if i == j {
                        40 + i as u64
                    } else {
                        ((i * 7 + j * 3) % 5) as u64
                    }
                })
                .collect()
        })
        .collect()
}

/// Tags open and close in order under one `<svg>` root, and every attribute value is quoted: the shape an
/// XML parser needs (entities are plotters' own escapes).
fn assert_balanced(svg: &str) {
    assert!(svg.starts_with("<svg "), "{}", &svg[..40.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = svg;
    let mut roots = 0;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("unclosed tag") + start;
        let tag = &rest[start + 1..end];
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        assert!(!tag.contains('<'), "stray < inside <{tag}>");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop(),
                Some(name.trim()),
                "</{name}> closes the wrong tag"
            );
        } else if !tag.ends_with('/') {
            if stack.is_empty() {
                roots += 1;
            }
            stack.push(tag.split_whitespace().next().unwrap_or(""));
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert_eq!(roots, 1);
}

#[test]
fn a_curve_is_the_same_bytes_every_time() {
    let h = history(14);
    let a = training_curve("Unet width 1", &h, 9).unwrap();
    let b = training_curve("Unet width 1", &h.clone(), 9).unwrap();
    assert_eq!(a.as_bytes(), b.as_bytes());
    assert_ne!(a, training_curve("Unet width 1", &h, 8).unwrap());
}

#[test]
fn a_curve_is_well_formed_and_shows_title_lines_and_the_best_epoch() {
    let svg = training_curve("ResSe width 0.5 <test> & co", &history(14), 9).unwrap();
    assert_balanced(&svg);
    assert!(svg.contains("ResSe width 0.5 &lt;test&gt; &amp; co"));
    assert!(
        svg.contains(">\nbest epoch 9\n<"),
        "one marker label per panel"
    );
    assert_eq!(svg.matches(">\nbest epoch 9\n<").count(), 2);
    for label in [
        "train",
        "validation",
        "train, segments",
        "validation, segments",
        "validation, tracks",
        "epoch",
        "cross-entropy",
        "100%",
    ] {
        assert!(svg.contains(&format!(">\n{label}\n<")), "missing {label}");
    }
    // One run per line and panel, and a legend swatch beside each.
    assert_eq!(strokes(&svg, TRAIN), 2 + 2);
    assert_eq!(strokes(&svg, VAL), 2 + 2);
    assert_eq!(strokes(&svg, VAL_TRACKS), 1 + 1);
    // Scores at the best epoch beside the legends.
    let best = &history(14)[8];
    assert!(svg.contains(&format!(">\nvalidation {:.3}\n<", best.val_loss)));
    assert!(svg.contains(&format!(
        ">\nvalidation {:.1}% tracks\n<",
        100.0 * best.val_track_accuracy
    )));
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn a_single_epoch_still_draws() {
    let svg = training_curve("one", &history(1), 1).unwrap();
    assert_balanced(&svg);
    assert!(svg.contains(">\nbest epoch 1\n<"));
    assert!(svg.contains(">\n1\n<"), "the one epoch is a tick");
}

#[test]
fn non_finite_values_leave_gaps_instead_of_failing() {
    let mut h = history(10);
    let clean = training_curve("m", &h, 4).unwrap();
    h[5].val_loss = f64::NAN;
    h[6].train_loss = f64::INFINITY;
    h[3].val_accuracy = f64::NAN;
    let gappy = training_curve("m", &h, 4).unwrap();
    assert_balanced(&gappy);
    assert!(!gappy.contains("NaN") && !gappy.contains("inf"));
    // Each broken line becomes two runs.
    assert_eq!(strokes(&gappy, TRAIN), strokes(&clean, TRAIN) + 1);
    assert_eq!(strokes(&gappy, VAL), strokes(&clean, VAL) + 2);
    // Three points fewer, and the best epoch's score is NaN: its circle goes from the plot and the legend.
    assert_eq!(
        gappy.matches("<circle").count(),
        clean.matches("<circle").count() - 3 - 2
    );
    assert!(gappy.contains(">\nvalidation n/a segments\n<"));

    let all_nan: Vec<EpochScores> = history(3)
        .into_iter()
        .map(|e| EpochScores {
            train_loss: f64::NAN,
            val_loss: f64::NAN,
            val_accuracy: f64::NAN,
            ..e
        })
        .collect();
    assert_balanced(&training_curve("m", &all_nan, 2).unwrap());
}

#[test]
fn bad_histories_are_errors() {
    assert!(matches!(
        training_curve("m", &[], 1),
        Err(ChartError::Invalid(_))
    ));
    assert!(training_curve("m", &history(3), 4).is_err());
    assert!(training_curve("m", &history(3), 0).is_err());
    let mut h = history(3);
    h[2].epoch = 2;
    assert!(training_curve("m", &h, 1).is_err());
}

#[test]
fn a_heatmap_is_the_same_bytes_every_time() {
    let names = classes(&["blues", "classical", "country"]);
    let a = confusion_heatmap(&names, &matrix(3), "val").unwrap();
    let b = confusion_heatmap(&names.clone(), &matrix(3), "val").unwrap();
    assert_eq!(a.as_bytes(), b.as_bytes());
}

#[test]
fn a_heatmap_has_a_cell_per_pair_with_its_count_and_every_name() {
    let names = classes(&[
        "blues",
        "classical",
        "country",
        "disco",
        "hiphop",
        "jazz",
        "metal",
        "pop",
        "reggae",
        "rock",
    ]);
    let counts = matrix(10);
    let svg = confusion_heatmap(&names, &counts, "Unet width 1: validation").unwrap();
    assert_balanced(&svg);
    // The background, one per cell, and the frame.
    assert_eq!(svg.matches("<rect").count(), 10 * 10 + 2);
    for name in &names {
        assert_eq!(
            svg.matches(&format!(">\n{name}\n<")).count(),
            2,
            "{name} on both axes"
        );
    }
    for count in counts.iter().flatten() {
        assert!(svg.contains(&format!(">\n{count}\n<")));
    }
    assert!(svg.contains(">\nUnet width 1: validation\n<"));
    assert!(svg.contains(">\npredicted\n<") && svg.contains(">\nactual\n<"));
    // A full diagonal is the darkest shade; an empty cell is white.
    assert!(svg.contains(&format!("fill=\"#{:02X}{:02X}{:02X}\"", 255, 255, 255)));
}

#[test]
fn shade_runs_from_white_to_the_heat_colour() {
    assert_eq!(shade(0.0), RGBColor(255, 255, 255));
    assert_eq!(shade(1.0), HEAT);
    let mid = shade(0.5);
    assert!(mid.0 < 255 && mid.0 > HEAT.0);
}

#[test]
fn long_names_turn_the_column_labels_and_widen_the_margin() {
    let short = confusion_heatmap(&classes(&["a", "b"]), &matrix(2), "t").unwrap();
    assert_eq!(short.matches("rotate(").count(), 1, "only the axis title");
    let long = classes(&["a rather long class name", "b"]);
    let svg = confusion_heatmap(&long, &matrix(2), "t").unwrap();
    assert_balanced(&svg);
    assert_eq!(
        svg.matches("rotate(270").count(),
        2 + 1,
        "two column labels and the axis title"
    );
    let width = |s: &str| -> u32 {
        let w = s.split("width=\"").nth(1).unwrap();
        w[..w.find('"').unwrap()].parse().unwrap()
    };
    assert!(
        width(&svg) > width(&short)
            || width(&short) >= 2 * 16 + text_width("a rather long class name", 14.0) as u32
    );
}

#[test]
fn names_are_escaped_and_control_characters_dropped() {
    let svg = confusion_heatmap(
        &classes(&["r&b", "<pop>", "tab\there"]),
        &matrix(3),
        "x\u{0}y",
    )
    .unwrap();
    assert_balanced(&svg);
    assert!(svg.contains(">\nr&amp;b\n<") && svg.contains(">\n&lt;pop&gt;\n<"));
    assert!(svg.contains(">\ntab here\n<") && svg.contains(">\nx y\n<"));
    assert!(!svg.contains('\u{0}') && !svg.contains('\t'));
}

#[test]
fn a_heatmap_with_empty_rows_or_huge_counts_draws() {
    let svg = confusion_heatmap(
        &classes(&["a", "b"]),
        &[vec![0, 0], vec![u64::MAX, u64::MAX]],
        "t",
    )
    .unwrap();
    assert_balanced(&svg);
    assert!(svg.contains(&format!(">\n{}\n<", u64::MAX)));
}

#[test]
fn bad_matrices_are_errors() {
    let three = classes(&["a", "b", "c"]);
    assert!(confusion_heatmap(&[], &[], "t").is_err());
    assert!(confusion_heatmap(&three, &matrix(2), "t").is_err());
    let mut ragged = matrix(3);
    ragged[1].pop();
    let err = confusion_heatmap(&three, &ragged, "t").unwrap_err();
    assert!(err.to_string().contains("row 1 (b)"), "{err}");
    ragged[1].extend([1, 2]);
    assert!(confusion_heatmap(&three, &ragged, "t").is_err());
}

#[test]
fn ticks_are_exact_decimals_covering_the_span() {
    let t = decimal_ticks(0.0, 2.3, 6.0).unwrap();
    assert_eq!(t.labels, ["0.0", "0.5", "1.0", "1.5", "2.0", "2.5"]);
    assert_eq!(t.values, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    assert_eq!((t.lo, t.hi), (0.0, 2.5));
    let t = decimal_ticks(0.0, 0.031, 6.0).unwrap();
    assert_eq!(t.labels, ["0.00", "0.01", "0.02", "0.03", "0.04"]);
    assert_eq!(t.hi, 0.04);
    let t = decimal_ticks(-0.3, 0.9, 6.0).unwrap();
    assert_eq!(t.labels.first().map(String::as_str), Some("-0.4"));
    assert_eq!(t.values[0], -0.4);
    let t = decimal_ticks(0.0, 3.0e9, 6.0).unwrap();
    assert_eq!(t.labels[1], "5e8");
    assert!(t.values.len() <= 7);
    assert!(decimal_ticks(0.0, f64::INFINITY, 6.0).is_err());
    assert!(decimal_ticks(1.0, 1.0, 6.0).is_err());
}

#[test]
fn epoch_ticks_are_round_numbers_within_the_run() {
    assert_eq!(epoch_ticks(1, 5).labels, ["1", "2", "3", "4", "5"]);
    assert_eq!(
        epoch_ticks(1, 40).labels,
        ["5", "10", "15", "20", "25", "30", "35", "40"]
    );
    let one = epoch_ticks(3, 3);
    assert_eq!(
        (one.labels.clone(), one.lo, one.hi),
        (vec!["3".to_string()], 2.0, 4.0)
    );
}

#[test]
fn text_width_grows_with_the_text_and_the_size() {
    assert_eq!(text_width("", 14.0), 0);
    assert!(text_width("classical", 14.0) > text_width("pop", 14.0));
    assert!(text_width("pop", 20.0) > text_width("pop", 14.0));
    assert!(text_width("WWW", 14.0) > text_width("iii", 14.0));
}

#[test]
fn the_loss_axis_fits_the_losses() {
    // A stalled run: losses within a few hundredths of 2.3 still get ticks between them.
    let flat: Vec<EpochScores> = history(4)
        .into_iter()
        .enumerate()
        .map(|(i, e)| EpochScores {
            train_loss: 2.30 - 0.01 * i as f64,
            val_loss: 2.31 - 0.005 * i as f64,
            ..e
        })
        .collect();
    let svg = training_curve("m", &flat, 2).unwrap();
    assert!(
        svg.contains(">\n2.300\n<") || svg.contains(">\n2.30\n<"),
        "{svg}"
    );
    assert!(!svg.contains(">\n0.0\n<") && !svg.contains(">\n0\n<"));
    // One loss value everywhere, however large, still spans an axis.
    for v in [0.0, 2.3, 1e17] {
        let same: Vec<EpochScores> = history(3)
            .into_iter()
            .map(|e| EpochScores {
                train_loss: v,
                val_loss: v,
                ..e
            })
            .collect();
        assert_balanced(&training_curve("m", &same, 1).unwrap());
    }
}

/// The bytes of two fixed charts, pinned. A deliberate change to the drawing (or to plotters' version or
/// features) changes these and every model folder's digest with them; a failure on one machine that passes on
/// another means the output depends on the machine, which these artifacts must never do.
#[test]
fn fixed_inputs_give_pinned_bytes() {
    let names = classes(&[
        "blues",
        "classical",
        "country",
        "disco",
        "hiphop",
        "jazz",
        "metal",
        "pop",
        "reggae",
        "rock",
    ]);
    let mut h = history(30);
    h[12].val_loss = f64::NAN;
    let curve = training_curve("Unet width 1 with SpecAugment", &h, 17).unwrap();
    let heatmap = confusion_heatmap(&names, &matrix(10), "Unet width 1: validation").unwrap();
    assert_eq!(
        blake3::hash(curve.as_bytes()).to_hex().as_str(),
        "f97a7118efae33c90cbeadbd7f5917dc6a81c1d903a8fc93010f5942dfbd5dc1"
    );
    assert_eq!(
        blake3::hash(heatmap.as_bytes()).to_hex().as_str(),
        "bdd61957a0a9a6c450a8ee0204e0f7398fb3c791cd37a0f8cf849d480e60adc6"
    );
}
