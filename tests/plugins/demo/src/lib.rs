//! Demo stages on synthetic data: a two-class Gaussian data set and a logistic regression
//! trained by full-batch gradient descent. They exercise the runner end to end (tensors
//! between plugins, progress, cancellation, caching) until the model and GLUE plugins exist.
use anyhow::{ensure, Result};
use petnas_sdk::artifact::kinds;
use petnas_sdk::{Artifact, Inputs, Options, Registrar, StageCtx, TypedStage};
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tch::{Kind, Tensor};

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.stage(Data);
    registrar.stage(Fit);
}

struct Data;

#[derive(Deserialize, Options)]
struct DataOptions {
    /// examples in all
    #[option(default = 512)]
    n: i64,
    /// features per example
    #[option(default = 8)]
    dim: i64,
    /// distance between the class means
    #[option(default = 1.0)]
    separation: f64,
    /// share of examples held out for testing
    #[option(default = 0.25)]
    test_fraction: f64,
}

impl TypedStage for Data {
    type Options = DataOptions;
    fn kind(&self) -> &'static str {
        "demo.data"
    }
    fn doc(&self) -> &'static str {
        "two Gaussian classes in `dim` dimensions, split into train and test (seeded)"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[]
    }
    fn output_kind(&self) -> &'static str {
        kinds::DATASET
    }
    fn run(&self, o: DataOptions, ctx: &StageCtx, _inputs: &Inputs) -> Result<Artifact> {
        ensure!(o.n >= 4, "`n` must be at least 4, got {}", o.n);
        ensure!(o.dim >= 1, "`dim` must be at least 1, got {}", o.dim);
        ensure!(
            (0.0..1.0).contains(&o.test_fraction),
            "`test_fraction` must be in [0, 1), got {}",
            o.test_fraction
        );
        // A seeded generator of our own: libtorch's global one is shared by parallel stages.
        let mut rng = rand::rngs::StdRng::seed_from_u64(ctx.seed);
        let labels: Vec<i64> = (0..o.n).map(|i| i % 2).collect();
        let features: Vec<f32> = labels
            .iter()
            .flat_map(|&y| {
                let shift = (y as f64 - 0.5) * o.separation;
                (0..o.dim).map(|_| (gaussian(&mut rng) + shift) as f32).collect::<Vec<_>>()
            })
            .collect();
        let x = Tensor::from_slice(&features).view([o.n, o.dim]).to_device(ctx.device);
        let y = Tensor::from_slice(&labels).to_device(ctx.device);
        let n_test = ((o.n as f64) * o.test_fraction).round() as i64;
        let n_train = o.n - n_test;
        tracing::info!(n_train, n_test, dim = o.dim, "synthetic data made");
        Ok(Artifact::new(
            kinds::DATASET,
            serde_json::json!({"n_train": n_train, "n_test": n_test, "dim": o.dim}),
        )
        .with_tensor("x_train", x.narrow(0, 0, n_train))
        .with_tensor("y_train", y.narrow(0, 0, n_train))
        .with_tensor("x_test", x.narrow(0, n_train, n_test))
        .with_tensor("y_test", y.narrow(0, n_train, n_test)))
    }
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

struct Fit;

#[derive(Deserialize, Options)]
struct FitOptions {
    /// gradient steps
    #[option(default = 200)]
    steps: i64,
    /// learning rate
    #[option(default = 0.5)]
    lr: f64,
}

impl TypedStage for Fit {
    type Options = FitOptions;
    fn kind(&self) -> &'static str {
        "demo.fit"
    }
    fn doc(&self) -> &'static str {
        "logistic regression on the training split by full-batch gradient descent"
    }
    fn input_kinds(&self) -> &'static [&'static str] {
        &[kinds::DATASET]
    }
    fn output_kind(&self) -> &'static str {
        kinds::MODEL
    }
    fn run(&self, o: FitOptions, ctx: &StageCtx, inputs: &Inputs) -> Result<Artifact> {
        ensure!(o.steps >= 1, "`steps` must be at least 1, got {}", o.steps);
        let data = inputs.one(kinds::DATASET)?;
        let x = data.tensor("x_train")?;
        let y = data.tensor("y_train")?.to_kind(Kind::Float);
        let dim = x.size()[1];
        let mut w = Tensor::zeros([dim], (Kind::Float, x.device())).set_requires_grad(true);
        let mut b = Tensor::zeros([1], (Kind::Float, x.device())).set_requires_grad(true);
        ctx.progress().set_total(o.steps as u64, "step");
        let mut loss_value = f64::NAN;
        for step in 0..o.steps {
            ctx.check_cancelled()?;
            let logits = x.matmul(&w) + &b;
            let loss =
                logits.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Mean);
            w.zero_grad();
            b.zero_grad();
            loss.backward();
            tch::no_grad(|| {
                let _ = w.f_sub_(&(w.grad() * o.lr));
                let _ = b.f_sub_(&(b.grad() * o.lr));
            });
            loss_value = loss.double_value(&[]);
            ensure!(loss_value.is_finite(), "the loss is {loss_value} at step {step}; lower `lr`");
            ctx.progress().advance(1);
        }
        tracing::info!(steps = o.steps, loss = loss_value, "fit finished");
        Ok(Artifact::new(kinds::MODEL, serde_json::json!({"steps": o.steps, "train_loss": loss_value}))
            .with_tensor("w", w.detach())
            .with_tensor("b", b.detach()))
    }
}
