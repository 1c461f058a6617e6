use super::*;
use rand_chacha::rand_core::SeedableRng;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

#[test]
fn widths_and_starts_stay_within_the_study_bounds_and_cover_them() {
    let aug = SpecAugment::default();
    let mut r = rng(11);
    let mut widths = [0u32; 25];
    let mut max_start_plus_width = 0;
    for _ in 0..20_000 {
        let m = aug.draw(128, 128, &mut r);
        for band in [m.freq.unwrap(), m.time.unwrap()] {
            assert!((1..=24).contains(&band.width), "{band:?}");
            assert!(band.start < 128 - band.width, "{band:?}");
            widths[band.width] += 1;
            max_start_plus_width = max_start_plus_width.max(band.start + band.width);
        }
    }
    assert_eq!(widths[0], 0);
    // 40,000 bands over 24 widths: about 1,667 each.
    assert!(
        widths[1..].iter().all(|&n| (1450..1900).contains(&n)),
        "{widths:?}"
    );
    // Start is drawn from [0, len - width), so the last cell is never masked.
    assert_eq!(max_start_plus_width, 127);
}

#[test]
fn widths_are_clamped_to_short_axes() {
    let aug = SpecAugment::default();
    let mut r = rng(5);
    let mut full = 0;
    for _ in 0..2000 {
        let m = aug.draw(6, 3, &mut r);
        let (f, t) = (m.freq.unwrap(), m.time.unwrap());
        assert!(f.width <= 6 && t.width <= 3);
        assert!(f.start + f.width <= 6 && t.start + t.width <= 3);
        if t.width == 3 {
            assert_eq!(t.start, 0);
            full += 1;
        }
    }
    assert!(full > 0, "a full-axis mask never came up");
    assert_eq!(aug.draw(0, 4, &mut r).freq, None);
    assert_eq!(
        SpecAugment::with_max_width(0).draw(8, 8, &mut r),
        ExampleMasks {
            freq: None,
            time: None
        }
    );
}

#[test]
fn masks_zero_exactly_their_cells_and_reproduce_from_the_seed() {
    let (n_mels, frames, b) = (40, 50, 6);
    let original: Vec<f32> = (0..b * n_mels * frames).map(|i| 1.0 + i as f32).collect();
    let aug = SpecAugment::default();

    let mut first = original.clone();
    let masks = aug.apply(&mut first, n_mels, frames, &mut rng(42)).unwrap();
    let mut second = original.clone();
    let again = aug
        .apply(&mut second, n_mels, frames, &mut rng(42))
        .unwrap();
    assert_eq!(masks, again);
    assert_eq!(first, second);
    let mut third = original.clone();
    aug.apply(&mut third, n_mels, frames, &mut rng(43)).unwrap();
    assert_ne!(first, third);

    assert_eq!(masks.len(), b);
    for (e, m) in masks.iter().enumerate() {
        let (f, t) = (m.freq.unwrap(), m.time.unwrap());
        for mel in 0..n_mels {
            for fr in 0..frames {
                let i = (e * n_mels + mel) * frames + fr;
                let masked = (f.start..f.start + f.width).contains(&mel)
                    || (t.start..t.start + t.width).contains(&fr);
                assert_eq!(
                    first[i],
                    if masked { 0.0 } else { original[i] },
                    "example {e} mel {mel} frame {fr}"
                );
            }
        }
    }
}

#[test]
fn disabled_draws_nothing_and_changes_nothing() {
    let mut data = vec![1.0f32; 2 * 4 * 4];
    let mut r = rng(1);
    let before = r.clone();
    assert!(SpecAugment::disabled()
        .apply(&mut data, 4, 4, &mut r)
        .unwrap()
        .is_empty());
    assert!(data.iter().all(|&x| x == 1.0));
    assert_eq!(r, before);
    assert!(SpecAugment::default()
        .apply(&mut data[..5], 4, 4, &mut r)
        .is_err());
}
