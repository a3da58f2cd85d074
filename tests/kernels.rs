//! The exact-f32 tuner's self-check (a wrong kernel injected into its candidates is excluded and
//! the product stays right; its checked choices kept in a cache file for later processes) and `doctor` (an injected fault is named as the first differing step).
use crate::common::{self, tiny};
use patchbay::backend::{BackendKind, DType};
use patchbay::jobs::doctor::{doctor, DoctorSpec};
use std::process::Command;

/// `lhs @ rhs` of `n`×`n` matrices on the host, in f64.
fn reference(lhs: &[f32], rhs: &[f32], n: usize) -> Vec<f32> {
    (0..n * n).map(|ij| (0..n).map(|k| lhs[ij / n * n + k] as f64 * rhs[k * n + ij % n] as f64).sum::<f64>() as f32).collect()
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn tuner_excludes_a_wrong_kernel<R: burn_cubecl::CubeRuntime>(device: R::Device, what: &str) {
    use burn::prelude::*;
    use burn::tensor::TensorPrimitive;
    use patchbay::backend::exact::{excluded, Candidate, Tuner};
    type B<R> = burn_cubecl::CubeBackend<R, f32, i32, u32>;
    let n = 64;
    let lhs: Vec<f32> = (0..n * n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
    let rhs: Vec<f32> = (0..n * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
    let on = |v: &[f32]| match Tensor::<B<R>, 2>::from_data(TensorData::new(v.to_vec(), [n, n]), &device).into_primitive() {
        TensorPrimitive::Float(t) => t,
        _ => unreachable!("a float tensor"),
    };
    let want = reference(&lhs, &rhs, n);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    // The wrong kernel computes rhs @ lhs, which is not lhs @ rhs here.
    assert!(common::max_abs_diff(&reference(&rhs, &lhs, n), &want) > 1.0);
    // Each tuner's product, checked, and how many keys it tuned (rather than took from the cache).
    let product = |tuner: &Tuner<R>, why: &str| {
        let out = tuner.matmul(on(&lhs), on(&rhs));
        let got: Vec<f32> = Tensor::<B<R>, 2>::from_primitive(TensorPrimitive::Float(out)).into_data().to_vec().unwrap();
        let diff = common::max_abs_diff(&got, &want);
        assert!(diff <= 1e-5 * scale, "{what}, {why}: the tuned product is off by {diff} (scale {scale})");
        tuner.tuned()
    };
    let with_wrong = || Tuner::<R>::default().with(Candidate::wrong_for_tests());
    let dir = std::env::temp_dir().join(format!("patchbay-tuner-{what}-{}", std::process::id()));
    let cache = dir.join("exact-tune.json");
    assert_eq!(product(&with_wrong().cached_at(cache.clone()), "tuned"), 1);
    let lines = excluded();
    let line = lines.iter().find(|l| l.contains("wrong-for-tests")).unwrap_or_else(|| panic!("{what}: the wrong kernel was not excluded: {lines:?}"));
    assert!(line.contains("[64, 64]") && line.contains("max |Δ|"), "{what}: the exclusion names the kernel, the shape and how far off it was: {line}");
    // A later tuner (process) with the same kernels on the same hardware takes the checked choice
    // from the cache without trying the candidates, and records the exclusion again.
    assert!(std::fs::read_to_string(&cache).unwrap().contains("wrong-for-tests"));
    assert_eq!(product(&with_wrong().cached_at(cache.clone()), "from the cache"), 0);
    let again = excluded().into_iter().skip(lines.len()).collect::<Vec<_>>();
    assert!(again.len() == 1 && again[0].starts_with(line.as_str()) && again[0].contains("checked by an earlier process"), "{what}: {again:?}");
    // Other kernels (another identity) are tuned again, their set kept beside the first one's;
    // an unreadable cache is tuned again and rewritten whole.
    assert_eq!(product(&Tuner::<R>::default().cached_at(cache.clone()), "other kernels"), 1);
    assert_eq!(product(&Tuner::<R>::default().cached_at(cache.clone()), "other kernels, cached"), 0);
    assert_eq!(product(&with_wrong().cached_at(cache.clone()), "the first kernels, kept beside the others"), 0);
    std::fs::write(&cache, "{ not json").unwrap();
    assert_eq!(product(&with_wrong().cached_at(cache.clone()), "unreadable cache"), 1);
    assert_eq!(product(&with_wrong().cached_at(cache.clone()), "rewritten cache"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_exact_f32_tuner_checks_every_kernel_against_the_naive_one() {
    let mut ran = 0;
    for spec in common::backends().into_iter().filter(|s| !s.fusion && s.dtype == DType::F32) {
        match spec.kind {
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => tuner_excludes_a_wrong_kernel::<burn::backend::wgpu::WgpuRuntime>(Default::default(), "wgpu"),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => tuner_excludes_a_wrong_kernel::<cubecl::cuda::CudaRuntime>(burn::backend::cuda::CudaDevice::new(spec.device), "cuda"),
            _ => continue,
        }
        ran += 1;
    }
    if ran == 0 {
        eprintln!("no cubecl backend among the tested ones: the tuner's check did not run");
    }
}

#[test]
fn doctor_names_the_faulty_step_and_passes_every_other() {
    // One GPU backend in f32: each further one compiles every kernel again (lavapipe: about 0.6 s
    // each), and what is tested here is doctor's localization, not the backend.
    let backends = common::backends().into_iter().filter(|s| s.kind != BackendKind::Cpu && s.dtype == DType::F32).take(1);
    for backend in backends {
        let fault = "mlp.in";
        let spec = DoctorSpec { backend: backend.clone(), text: Some("Michelle Jones was a top-notch student. Michelle".into()), positions: 0, rows: 3, inject_fault: Some(fault.into()) };
        let report = doctor(tiny().to_str().unwrap(), &spec, None).unwrap();
        let differing: Vec<_> = report.steps.iter().filter(|s| s.differs).collect();
        // The fault is injected in every block: exactly those steps differ, nothing else.
        assert_eq!(differing.len(), 3, "{backend:?}: {differing:#?}");
        assert!(differing.iter().all(|s| s.step.starts_with(fault) && !s.step.contains("last")), "{backend:?}: {differing:#?}");
        let first = report.first_difference().unwrap();
        assert_eq!(first.block, Some(0));
        assert!((first.max_abs_diff - 1.0).abs() < 0.1, "{first:?}");
        // Every step ran and was compared: 3 blocks of 13 steps, then the final norm and the unembedding.
        assert_eq!(report.steps.len(), 3 * 13 + 2);
        let tol = common::tolerance(&backend).max(report.tolerance);
        assert!(report.logits_max_abs_diff <= 10.0 * tol, "{backend:?}: logits off by {}", report.logits_max_abs_diff);
        if backend.kind == BackendKind::Wgpu && !backend.fusion {
            let product = report.steps.iter().find(|s| s.step.starts_with("attn.scores")).unwrap();
            assert!(product.operands.len() == 2 && product.operands.iter().all(|o| o.contains("strides")), "{product:?}");
        }
    }
}

#[test]
fn doctor_command_prints_the_steps_and_fails_in_one_line_on_a_difference() {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(["doctor", "--model", tiny().to_str().unwrap(), "--backend", "cpu", "--rows", "2"]).args(extra).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, stdout, stderr) = run(&[]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(stdout.matches("  ok ").count(), 4, "3 blocks and the final steps: {stdout}");
    let (ok, stdout, stderr) = run(&["--inject-fault", "attn.out"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("block 0, step attn.out (linear)"), "{stderr}");
    assert!(stdout.contains("block 0, step by step") && stdout.contains("<- differs") && stdout.contains("mlp.in (linear)"), "{stdout}");
    let (ok, _, stderr) = run(&["--rows", "0"]);
    assert!(!ok && stderr.contains("--rows"), "{stderr}");
    // The default prompt is token ids within any vocabulary; a text's token outside it is named.
    let small = common::fixtures().join("shapes/h1-dh64");
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(["doctor", "--model", small.to_str().unwrap(), "--backend", "cpu"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(["doctor", "--model", small.to_str().unwrap(), "--backend", "cpu", "--text", "Michelle Jones"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("outside the model's vocabulary"));
    // The other families' steps: grouped heads, QK-norm and rotary positions (Qwen3: the scores
    // take the normed, rotated q and k); Gemma 2's norms after each sublayer; Pythia's parallel
    // blocks. Every step passes (and the steps compose to the model's forward: doctor checks
    // that itself), and a fault injected into one is found there, in one line.
    for (family, blocks, fault, names) in [
        ("qwen3", 2, "attn.scores", "block 0, step attn.scores (q·kᵀ)"),
        ("gemma2", 4, "post_attn", "block 0, step post_attn"),
        ("gemma2", 4, "post_mlp", "block 0, step post_mlp"),
        ("pythia", 2, "norm_mlp", "block 0, step norm_mlp"),
    ] {
        let dir = common::fixtures().join("families").join(family);
        for (fault, ok) in [(None, true), (Some(fault), false)] {
            let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(["doctor", "--model", dir.to_str().unwrap(), "--backend", "cpu"]).args(fault.map(|f| ["--inject-fault", f]).iter().flatten()).output().unwrap();
            let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.status.success(), ok, "{family}: {stdout}{stderr}");
            if ok {
                assert_eq!(stdout.matches("  ok ").count(), blocks + 1, "{family}: {blocks} blocks and the final steps: {stdout}");
            } else {
                assert!(stderr.trim().lines().count() == 1 && stderr.contains(names), "{family}: {stderr}");
            }
        }
    }
}
