//! ELECTRA's discriminator as an encoder (`modeling_electra.py`): BERT's embeddings at
//! `embedding_size`, projected to the hidden size when the two differ
//! (`embeddings_project`), then BERT's encoder; its own classification head (dense, GELU,
//! out_proj).
use std::sync::Arc;

use anyhow::Result;
use petnas_sdk::model::{
    Backbone, BackboneInfo, Batch, HeadActivation, HeadDense, HeadSpec, HeadToken, HfNames, Role, Site,
};
use tch::Tensor;

use crate::backbone::{Held, Model, Network};
use crate::bert::{BertConfig, BertEmbeddings, BertEncoder};
use crate::layers::{Linear, Pass};
use crate::weights::Weights;
use crate::{Checkpoint, Family};

pub const FAMILY: Family = Family { model_types: &["electra"], weight_prefixes: &["electra."], load };

/// `ElectraModel`.
pub struct Electra {
    embeddings: BertEmbeddings,
    /// `embeddings_project`, where `embedding_size` is not the hidden size.
    project: Option<Linear>,
    encoder: BertEncoder,
    hidden_dropout: f64,
}

fn load(checkpoint: &Checkpoint, w: &Weights) -> Result<Arc<dyn Backbone>> {
    let config = &checkpoint.config;
    let c = BertConfig::read(config)?;
    let (h, e) = (c.hidden_size, c.embedding_size.unwrap_or(c.hidden_size));
    config.require(e > 0, || format!("embedding_size must be positive, got {e}"))?;
    let vb = w.root();
    let embeddings = BertEmbeddings::load(&vb.pp("embeddings"), &c, e, None)?;
    let project = if e != h { Some(Linear::load(&vb.pp("embeddings_project"), e, h, true)?) } else { None };
    let encoder = BertEncoder::load(&vb.pp("encoder"), &c)?;
    w.check_all_taken("encoder.", "config.json lists fewer layers than the checkpoint has")?;
    let mut weights = Vec::new();
    embeddings.weights("embeddings", &mut weights);
    if let Some(p) = &project {
        p.weights(&mut weights);
    }
    for layer in &encoder.layers {
        layer.weights(&mut weights);
    }
    let dropout = c.classifier_dropout();
    Ok(Arc::new(Model {
        held: Held {
            info: BackboneInfo {
                model_type: config.model_type.clone(),
                dir: checkpoint.dir.clone(),
                hidden_size: h,
                num_layers: c.num_hidden_layers,
                num_heads: c.num_attention_heads,
                vocab_size: c.vocab_size,
                max_tokens: Some(embeddings.max_tokens()),
                parameters: weights.iter().map(|(_, t)| t.numel() as i64).sum(),
                dtype: w.dtype(),
            },
            head: HeadSpec {
                token: HeadToken::First,
                dense: Some(HeadDense {
                    name: "classifier.dense".into(),
                    pretrained: false,
                    activation: HeadActivation::Gelu,
                    dropout,
                }),
                classifier: "classifier.out_proj".into(),
                classifier_bias: true,
                dropout,
                modules_to_save: vec!["classifier".into()],
            },
            names: HfNames {
                base_prefix: "electra".into(),
                sequence_classification: "ElectraForSequenceClassification".into(),
            },
            device: vb.device(),
            weights,
            tokenizer: checkpoint.tokenizer.clone(),
        },
        network: Electra { embeddings, project, encoder, hidden_dropout: c.hidden_dropout_prob },
    }))
}

impl Electra {
    fn embed(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        let embedded =
            pass.dropout.apply(self.embeddings.forward(batch, pass)?, pass.dropout.rate(self.hidden_dropout));
        Ok(match &self.project {
            Some(p) => p.forward(&embedded, pass)?,
            None => embedded,
        })
    }

    fn encode(&self, batch: &Batch, pass: &Pass, first_token_only: bool) -> Result<Tensor> {
        self.encoder.forward(self.embed(batch, pass)?, &batch.attention_mask, pass, first_token_only)
    }
}

impl Network for Electra {
    fn sites(&self) -> Vec<Site> {
        let mut sites = vec![self.embeddings.site()];
        sites.extend(self.project.iter().map(|p| p.site(None, "", Role::Other)));
        sites.extend(self.encoder.sites());
        sites
    }
    fn forward(&self, batch: &Batch, pass: &Pass) -> Result<Tensor> {
        self.encode(batch, pass, false)
    }
    fn forward_head_token(&self, batch: &Batch, pass: &Pass, _token: HeadToken) -> Result<Tensor> {
        Ok(self.encode(batch, pass, true)?.squeeze_dim(1))
    }
    fn backward_recomputing(
        &self,
        batch: &Batch,
        pass: &Pass,
        _token: HeadToken,
        loss: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.encoder.backward_recomputing(self.embed(batch, pass)?, &batch.attention_mask, pass, loss)
    }
}
