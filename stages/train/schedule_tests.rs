use super::*;

#[test]
fn plateau_cuts_the_rate_by_the_factor_after_eight_flat_epochs() {
    let mut p = ReduceLrOnPlateau::new(0.2, 8);
    let mut lr = 1e-3;
    assert_eq!(p.update(1.0, lr), None);
    // Seven non-improving epochs: nothing yet. A drop smaller than min_delta (1e-4) does not count.
    for v in [1.0, 1.2, 0.99995, 1.0, 1.0, 1.5, 0.99991] {
        assert_eq!(
            p.update(v, lr),
            None,
            "reduced too early at wait {}",
            p.wait
        );
    }
    assert_eq!(p.wait, 7);
    // The eighth.
    let cut = p.update(1.0, lr).expect("no reduction after 8 flat epochs");
    assert_eq!(cut, 1e-3 * 0.2);
    assert_eq!(p.wait, 0);
    lr = cut;
    // A real improvement (more than 1e-4) resets the count; another 8 flat epochs cut again.
    for _ in 0..5 {
        assert_eq!(p.update(1.0, lr), None);
    }
    assert_eq!(p.update(0.9998, lr), None);
    assert_eq!(p.best, Some(0.9998));
    assert_eq!(p.wait, 0);
    for _ in 0..7 {
        assert_eq!(p.update(0.9998, lr), None);
    }
    assert_eq!(p.update(0.9998, lr), Some(1e-3 * 0.2 * 0.2));
}

#[test]
fn plateau_honours_cooldown_and_the_floor() {
    let mut p = ReduceLrOnPlateau::new(0.5, 2);
    p.cooldown = 2;
    p.min_lr = 0.3;
    assert_eq!(p.update(1.0, 1.0), None);
    assert_eq!(p.update(1.0, 1.0), None);
    assert_eq!(p.update(1.0, 1.0), Some(0.5));
    // As in Keras the counter is decremented before the check, so cooldown 2 keeps one epoch from
    // counting; the next cut comes two flat epochs after that, clamped to the floor.
    assert_eq!(p.update(1.0, 0.5), None);
    assert_eq!(p.update(1.0, 0.5), None);
    assert_eq!(p.wait, 1);
    assert_eq!(p.update(1.0, 0.5), Some(0.3));
    for _ in 0..6 {
        assert_eq!(p.update(1.0, 0.3), None, "cut below the floor");
    }
}

#[test]
fn plateau_state_survives_json() {
    let mut p = ReduceLrOnPlateau::new(0.2, 8);
    p.update(0.123_456_789_012_345_68, 1e-3);
    p.update(0.2, 1e-3);
    let back: ReduceLrOnPlateau =
        serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    let fresh: ReduceLrOnPlateau =
        serde_json::from_str(&serde_json::to_string(&ReduceLrOnPlateau::new(0.2, 8)).unwrap())
            .unwrap();
    assert_eq!(fresh.best, None);
}

#[test]
fn early_stopping_needs_strictly_greater_and_stops_after_patience() {
    let mut es = EarlyStopping::new(3);
    let s = es.update(1, 0.5, true);
    assert!(s.new_best && !s.stop);
    assert!(es.update(2, 0.6, false).new_best);
    // Equal is no improvement.
    let s = es.update(3, 0.6, false);
    assert!(!s.new_best && !s.stop);
    assert!(!es.update(4, 0.55, false).stop);
    let s = es.update(5, 0.6, false);
    assert!(s.stop && !s.new_best);
    assert!(es.stopped);
    assert_eq!(es.best, Some(0.6));
    assert_eq!(es.best_epoch, Some(2));
}

#[test]
fn early_stopping_takes_the_first_epoch_even_when_it_is_nan() {
    let mut es = EarlyStopping::new(1);
    let s = es.update(1, f64::NAN, true);
    assert!(s.new_best && !s.stop);
    assert_eq!(es.best, None);
    assert_eq!(es.best_epoch, Some(1));
    // Keras never stops on the first epoch, even with patience 0.
    let mut zero = EarlyStopping::new(0);
    assert!(!zero.update(1, f64::NAN, true).stop);
    assert!(zero.update(2, f64::NAN, false).stop);
    // The first real number after a NaN start is an improvement.
    let s = es.update(2, 0.1, false);
    assert!(s.new_best);
    assert_eq!(es.best_epoch, Some(2));
    let back: EarlyStopping = serde_json::from_str(&serde_json::to_string(&es).unwrap()).unwrap();
    assert_eq!(back, es);
}
