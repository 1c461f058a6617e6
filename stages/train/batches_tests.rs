use super::*;
use rand_chacha::rand_core::SeedableRng;

#[test]
fn shuffle_is_a_permutation_reproducible_from_the_seed() {
    let a = shuffled_order(1000, &mut ChaCha20Rng::seed_from_u64(7));
    let b = shuffled_order(1000, &mut ChaCha20Rng::seed_from_u64(7));
    let c = shuffled_order(1000, &mut ChaCha20Rng::seed_from_u64(8));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_ne!(a, sorted, "a shuffle of 1000 items left them in order");
    assert!(shuffled_order(0, &mut ChaCha20Rng::seed_from_u64(7)).is_empty());
    assert_eq!(
        shuffled_order(1, &mut ChaCha20Rng::seed_from_u64(7)),
        vec![0]
    );
}

#[test]
fn shuffle_puts_every_item_everywhere_about_equally_often() {
    // 3 items, 6000 shuffles: each of the 6 permutations should come up about 1000 times.
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..6000 {
        *counts.entry(shuffled_order(3, &mut rng)).or_insert(0u32) += 1;
    }
    assert_eq!(counts.len(), 6);
    for (perm, n) in counts {
        assert!((850..1150).contains(&n), "{perm:?} came up {n} times");
    }
}

#[test]
fn uniform_below_stays_in_range_and_covers_it() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut seen = [0u32; 24];
    for _ in 0..24_000 {
        let x = uniform_below(&mut rng, 24);
        seen[x as usize] += 1;
    }
    assert!(seen.iter().all(|&n| (850..1150).contains(&n)), "{seen:?}");
    assert_eq!(uniform_below(&mut rng, 0), 0);
    assert_eq!(uniform_below(&mut rng, 1), 0);
}

#[test]
fn batches_keep_the_remainder_last() {
    let order: Vec<usize> = (0..10).collect();
    let sizes: Vec<usize> = batches(&order, 4).map(<[usize]>::len).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    let flat: Vec<usize> = batches(&order, 4).flatten().copied().collect();
    assert_eq!(flat, order);
}

#[test]
fn gathered_rows_land_in_the_batch_tensor_in_order() {
    // 3 segments of 2 mels x 3 frames; segment i holds 10*i + cell.
    let values: Vec<f32> = (0..3)
        .flat_map(|i| (0..6).map(move |c| (10 * i + c) as f32))
        .collect();
    let mut buf = Vec::new();
    gather_rows(&values, 6, &[2, 0], &mut buf).unwrap();
    let t = batch_tensor(buf, 2, 3).unwrap();
    assert_eq!(t.dims(), &[2, 1, 2, 3]);
    let rows: Vec<Vec<Vec<Vec<f32>>>> = (0..2)
        .map(|b| vec![t.get(b).unwrap().get(0).unwrap().to_vec2::<f32>().unwrap()])
        .collect();
    assert_eq!(
        rows[0][0],
        vec![vec![20.0, 21.0, 22.0], vec![23.0, 24.0, 25.0]]
    );
    assert_eq!(rows[1][0], vec![vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]);

    let labels = label_tensor(&[7, 8, 9], &[2, 0]).unwrap();
    assert_eq!(labels.to_vec1::<u32>().unwrap(), vec![9, 7]);
}

#[test]
fn out_of_range_rows_are_errors() {
    let mut buf = Vec::new();
    assert!(gather_rows(&[0.0; 12], 6, &[2], &mut buf).is_err());
    assert!(label_tensor(&[1, 2], &[2]).is_err());
    assert!(batch_tensor(vec![0.0; 7], 2, 3).is_err());
}
