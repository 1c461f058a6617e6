use super::*;
use candle_core::{DType, Device, Tensor, Var};

fn scalar_var(x: f64) -> Var {
    Var::from_tensor(&Tensor::new(&[x], &Device::Cpu).unwrap()).unwrap()
}

fn value(var: &Var) -> f64 {
    var.as_tensor().to_vec1::<f64>().unwrap()[0]
}

/// Steps `p` with the given gradients through the loss `g * p`, whose gradient is exactly `g`.
fn run(p0: f64, grads: &[f64]) -> Vec<f64> {
    let p = scalar_var(p0);
    let mut adam = Adam::new(vec![("p".into(), p.clone())], 1e-3).unwrap();
    grads
        .iter()
        .map(|&g| {
            let loss = (p.as_tensor() * g).unwrap().sum_all().unwrap();
            adam.backward_step(&loss).unwrap();
            value(&p)
        })
        .collect()
}

#[test]
fn two_steps_on_a_scalar_match_the_hand_computed_keras_update() {
    // t=1: m = 0.05, v = 2.5e-4, alpha = 1e-3 * sqrt(1e-3) / 0.1 = 3.16227766e-4,
    //      p = 1 - 0.05 * alpha / (0.0158113883 + 1e-7) = 0.9990000063245154
    // t=2: m = 0.02, v = 3.1225e-4, alpha = 1e-3 * sqrt(1 - 0.999^2) / (1 - 0.9^2) = 2.35317e-4,
    //      p = p1 - 0.02 * alpha / (0.0176706 + 1e-7) = 0.9987336707920792
    let got = run(1.0, &[0.5, -0.25]);
    assert!((got[0] - 0.9990000063245154).abs() <= 1e-12, "{}", got[0]);
    assert!((got[1] - 0.9987336707920792).abs() <= 1e-12, "{}", got[1]);
}

#[test]
fn epsilon_is_added_to_the_uncorrected_root_of_v() {
    // With gradients near epsilon the placement matters: Keras gives 0.999940516512848 after one step,
    // the textbook m_hat / (sqrt(v_hat) + eps) would give 1 - 1e-3 * 2e-7 / 3e-7 = 0.99933.
    let got = run(1.0, &[2e-7, 1e-7]);
    assert!((got[0] - 0.999940516512848).abs() <= 1e-12, "{}", got[0]);
    assert!((got[1] - 0.9998789775505763).abs() <= 1e-12, "{}", got[1]);
    assert!((got[0] - (1.0 - 1e-3 * 2.0 / 3.0)).abs() > 1e-5);
}

#[test]
fn changing_the_learning_rate_between_steps_scales_the_next_update() {
    let p = scalar_var(0.0);
    let mut adam = Adam::new(vec![("p".into(), p.clone())], 1e-3).unwrap();
    adam.backward_step(&(p.as_tensor() * 1.0).unwrap().sum_all().unwrap())
        .unwrap();
    let after_one = value(&p);
    adam.set_learning_rate(0.0);
    adam.backward_step(&(p.as_tensor() * 1.0).unwrap().sum_all().unwrap())
        .unwrap();
    assert_eq!(value(&p), after_one);
    assert_eq!(adam.iterations(), 2);
}

fn f32_vars() -> Vec<(String, Var)> {
    let a = Var::from_tensor(&Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &Device::Cpu).unwrap())
        .unwrap();
    let b = Var::from_tensor(&Tensor::new(&[0.1f32, 0.2, 0.3], &Device::Cpu).unwrap()).unwrap();
    // Given out of order on purpose: the optimizer sorts.
    vec![("z.b".into(), b), ("a.w".into(), a)]
}

fn f32_loss(vars: &[(String, Var)], k: f32) -> Tensor {
    let a = vars.iter().find(|v| v.0 == "a.w").unwrap().1.as_tensor();
    let b = vars.iter().find(|v| v.0 == "z.b").unwrap().1.as_tensor();
    let la = (a.sqr().unwrap() * k as f64).unwrap().sum_all().unwrap();
    let lb = (b.exp().unwrap() * (1.0 - k as f64))
        .unwrap()
        .sum_all()
        .unwrap();
    (la + lb).unwrap()
}

fn bits(vars: &[(String, Var)]) -> Vec<u32> {
    vars.iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .map(f32::to_bits)
        .collect()
}

fn clone_vars(vars: &[(String, Var)]) -> Vec<(String, Var)> {
    vars.iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn exported_state_resumes_bit_identically() {
    let ks = [0.3f32, 0.9, 0.1, 0.6, 0.2, 0.8];
    let straight = f32_vars();
    let mut adam = Adam::new(straight.clone(), 1e-2).unwrap();
    for &k in &ks {
        adam.backward_step(&f32_loss(&straight, k)).unwrap();
    }

    let first = f32_vars();
    let mut adam1 = Adam::new(first.clone(), 1e-2).unwrap();
    for &k in &ks[..3] {
        adam1.backward_step(&f32_loss(&first, k)).unwrap();
    }
    let state: HashMap<String, Tensor> = adam1.state_tensors().unwrap().into_iter().collect();
    assert_eq!(state["adam/iterations"].to_scalar::<i64>().unwrap(), 3);
    assert_eq!(state["adam/momentum/a.w"].dims(), &[2, 2]);
    assert_eq!(state["adam/velocity/z.b"].dtype(), DType::F32);

    let second = clone_vars(&first);
    let mut adam2 = Adam::new(second.clone(), 0.5).unwrap();
    adam2.load_state_tensors(&state).unwrap();
    assert_eq!(adam2.learning_rate(), 1e-2);
    for &k in &ks[3..] {
        adam2.backward_step(&f32_loss(&second, k)).unwrap();
    }
    assert_eq!(bits(&second), bits(&straight));
    assert_ne!(
        bits(&second),
        bits(&f32_vars()),
        "training must have moved the weights"
    );
}

#[test]
fn mismatched_state_is_rejected_without_changing_anything() {
    let vars = f32_vars();
    let mut adam = Adam::new(vars.clone(), 1e-2).unwrap();
    adam.backward_step(&f32_loss(&vars, 0.5)).unwrap();
    let mut state: HashMap<String, Tensor> = adam.state_tensors().unwrap().into_iter().collect();

    let mut other = Adam::new(f32_vars(), 1e-3).unwrap();
    state.insert(
        "adam/momentum/a.w".into(),
        Tensor::zeros((4,), DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(other.load_state_tensors(&state).is_err());
    state.remove("adam/momentum/a.w");
    assert!(other.load_state_tensors(&state).is_err());
    assert_eq!(other.iterations(), 0);
    assert_eq!(other.learning_rate(), 1e-3);
}

#[test]
fn duplicate_names_and_integer_vars_are_refused() {
    let v = scalar_var(1.0);
    assert!(Adam::new(vec![("x".into(), v.clone()), ("x".into(), v)], 1e-3).is_err());
    let int = Var::from_tensor(&Tensor::new(&[1u32], &Device::Cpu).unwrap()).unwrap();
    assert!(Adam::new(vec![("i".into(), int)], 1e-3).is_err());
}
