//! Activation checkpointing (`train.fit`'s `gradient_checkpointing`): a training pass that
//! keeps only each layer's input, and recomputes a layer's activations when its gradient is
//! needed.
//!
//! tch has no custom autograd functions, so the backward pass is driven here, one layer at a
//! time from the last: the layers run forward without a graph; the loss is taken from the
//! last layer's output as a leaf, and its gradient there propagated back by re-running each
//! layer with a graph on its saved input and back-propagating `sum(output · gradient)`, whose
//! gradient is the one `output.backward(gradient)` would give. Parameter gradients accumulate
//! across those calls as they would in one `loss.backward()`. A layer's dropout masks are
//! drawn again from the same place in the pass's stream (see [`Dropout::seek`]).
use anyhow::Result;
use tch::{Kind, Tensor};

use petnas_sdk::dropout::Dropout;

/// What a family's stack of layers is, for one pass: the first layer's input (with its graph
/// back to the embeddings), the tensors every layer reads besides (DeBERTa's relative
/// embeddings; those with a graph get their gradient as the input does), and layer `i` as a
/// function of its input and those.
pub struct Layers<'a> {
    pub input: Tensor,
    pub shared: Vec<Tensor>,
    pub count: usize,
    pub layer: &'a Layer<'a>,
}

/// Layer `i` on its input and the shared tensors.
pub type Layer<'a> = dyn Fn(usize, &Tensor, &[Tensor]) -> Result<Tensor> + 'a;

/// Back-propagates `loss(last layer's output)` through `layers`, keeping one hidden state per
/// layer instead of every activation; returns the loss (without its graph).
pub fn backward(
    layers: Layers,
    loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    dropout: &Dropout,
) -> Result<Tensor> {
    let Layers { input, shared, count, layer } = layers;
    let leaves: Vec<Tensor> =
        shared.iter().map(|t| t.detach().set_requires_grad(t.requires_grad())).collect();
    let mut saved = Vec::with_capacity(count);
    let mut hidden = input.detach();
    tch::no_grad(|| -> Result<()> {
        for i in 0..count {
            let start = dropout.position();
            let next = layer(i, &hidden, &leaves)?;
            saved.push((std::mem::replace(&mut hidden, next), start));
        }
        Ok(())
    })?;
    let last = hidden.set_requires_grad(true);
    let value = loss(&last)?;
    value.backward();
    let end = dropout.position();
    let mut gradient = last.grad();
    for (i, (input, start)) in saved.into_iter().enumerate().rev() {
        dropout.seek(start);
        let input = input.set_requires_grad(true);
        let output = layer(i, &input, &leaves)?;
        (output * gradient.detach()).sum(Kind::Float).backward();
        gradient = input.grad();
    }
    dropout.seek(end);
    // What precedes the layers, in one backward pass: the embeddings' graph may be shared.
    let mut rest = Vec::new();
    if input.requires_grad() {
        rest.push((input * gradient.detach()).sum(Kind::Float));
    }
    for (tensor, leaf) in shared.iter().zip(&leaves) {
        if tensor.requires_grad() && leaf.grad().defined() {
            rest.push((tensor * leaf.grad().detach()).sum(Kind::Float));
        }
    }
    if let Some(first) = rest.pop() {
        rest.into_iter().fold(first, |sum, t| sum + t).backward();
    }
    Ok(value.detach())
}
