//! Tokenised data sets as dataset artifacts hold them, and the batches made from them:
//! dynamic padding to the longest sequence of each batch, optional length bucketing,
//! shuffling that depends only on the seed.
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use crate::metrics::Scoring;
use petnas_sdk::artifact::Artifact;
use petnas_sdk::model::{Batch, Encoding};

#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// A split without labels (GLUE test sets).
    None,
    Classes(Vec<i64>),
    /// Regression targets (STS-B).
    Scores(Vec<f32>),
}

/// Ragged token sequences stored flat: example `i` is `ids[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedSplit {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    pub offsets: Vec<i64>,
    pub labels: Labels,
}

#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub batch_size: usize,
    /// Shuffle with this seed; `None` keeps the split's order.
    pub shuffle_seed: Option<u64>,
    /// Group examples of similar length (less padding); batch order is still shuffled.
    pub bucket_by_length: bool,
}

/// How many batches' worth of examples are sorted together when bucketing.
const BUCKET_BATCHES: usize = 50;

impl TokenizedSplit {
    pub fn from_encodings(encodings: &[Encoding], labels: Labels) -> TokenizedSplit {
        let mut split = TokenizedSplit { ids: Vec::new(), type_ids: Vec::new(), offsets: vec![0], labels };
        for e in encodings {
            split.ids.extend_from_slice(&e.ids);
            split.type_ids.extend_from_slice(&e.type_ids);
            split.offsets.push(split.ids.len() as i64);
        }
        split
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn seq_len(&self, row: usize) -> usize {
        (self.offsets[row + 1] - self.offsets[row]) as usize
    }

    /// The tensors that store the split in an artifact, named `<split>.<field>`.
    pub fn to_tensors(&self, split: &str) -> Vec<(String, Tensor)> {
        let mut out = vec![
            (format!("{split}.ids"), Tensor::from_slice(&self.ids)),
            (format!("{split}.type_ids"), Tensor::from_slice(&self.type_ids)),
            (format!("{split}.offsets"), Tensor::from_slice(&self.offsets)),
        ];
        match &self.labels {
            Labels::None => {}
            Labels::Classes(c) => out.push((format!("{split}.labels"), Tensor::from_slice(c))),
            Labels::Scores(s) => out.push((format!("{split}.labels"), Tensor::from_slice(s))),
        }
        out
    }

    pub fn from_artifact(artifact: &Artifact, split: &str) -> Result<TokenizedSplit> {
        let vec_i64 = |name: &str| -> Result<Vec<i64>> {
            let t = artifact.tensor(&format!("{split}.{name}"))?;
            Vec::<i64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Int64)).context("not a vector")
        };
        let labels = match artifact.tensors.get(&format!("{split}.labels")) {
            None => Labels::None,
            Some(t) if t.kind() == Kind::Int64 => {
                Labels::Classes(Vec::<i64>::try_from(t.to_device(Device::Cpu))?)
            }
            Some(t) => Labels::Scores(Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float))?),
        };
        let split_data = TokenizedSplit {
            ids: vec_i64("ids")?,
            type_ids: vec_i64("type_ids")?,
            offsets: vec_i64("offsets")?,
            labels,
        };
        let n = split_data.len();
        let consistent = split_data.ids.len() == split_data.type_ids.len()
            && split_data.offsets.last().copied() == Some(split_data.ids.len() as i64)
            && match &split_data.labels {
                Labels::None => true,
                Labels::Classes(c) => c.len() == n,
                Labels::Scores(s) => s.len() == n,
            };
        if !consistent {
            bail!("the `{split}` split of the dataset artifact is inconsistent (ids, offsets and labels disagree)");
        }
        Ok(split_data)
    }

    /// The rows of each batch, in the order batches are served.
    pub fn batch_rows(&self, options: &BatchOptions) -> Vec<Vec<usize>> {
        let size = options.batch_size.max(1);
        let mut rows: Vec<usize> = (0..self.len()).collect();
        let mut rng = options.shuffle_seed.map(rand::rngs::StdRng::seed_from_u64);
        if let Some(rng) = rng.as_mut() {
            rows.shuffle(rng);
        }
        if options.bucket_by_length {
            for chunk in rows.chunks_mut(size * BUCKET_BATCHES) {
                chunk.sort_by_key(|&r| self.seq_len(r));
            }
        }
        let mut batches: Vec<Vec<usize>> = rows.chunks(size).map(<[usize]>::to_vec).collect();
        if options.bucket_by_length {
            if let Some(rng) = rng.as_mut() {
                batches.shuffle(rng);
            }
        }
        batches
    }

    /// One batch of these rows, padded to the longest, on `device`.
    pub fn batch(&self, rows: &[usize], pad_id: i64, device: Device) -> Batch {
        self.batch_padded(rows, pad_id, device, 0)
    }

    /// One batch padded to the longest of its rows, or to `min_width` if that is more
    /// (fixed shapes, as `padding="max_length"` gives in Hugging Face).
    pub fn batch_padded(&self, rows: &[usize], pad_id: i64, device: Device, min_width: usize) -> Batch {
        let width = rows.iter().map(|&r| self.seq_len(r)).max().unwrap_or(0).max(min_width);
        let n = rows.len();
        let mut ids = vec![pad_id; n * width];
        let mut types = vec![0i64; n * width];
        let mut mask = vec![0i64; n * width];
        for (b, &r) in rows.iter().enumerate() {
            let (start, end) = (self.offsets[r] as usize, self.offsets[r + 1] as usize);
            let len = end - start;
            ids[b * width..b * width + len].copy_from_slice(&self.ids[start..end]);
            types[b * width..b * width + len].copy_from_slice(&self.type_ids[start..end]);
            mask[b * width..b * width + len].fill(1);
        }
        let shape = [n as i64, width as i64];
        let labels = match &self.labels {
            Labels::None => None,
            Labels::Classes(c) => Some(Tensor::from_slice(&rows.iter().map(|&r| c[r]).collect::<Vec<_>>())),
            Labels::Scores(s) => Some(Tensor::from_slice(&rows.iter().map(|&r| s[r]).collect::<Vec<_>>())),
        };
        Batch {
            input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            token_type_ids: Tensor::from_slice(&types).view(shape).to_device(device),
            attention_mask: Tensor::from_slice(&mask).view(shape).to_device(device),
            labels: labels.map(|l| l.to_device(device)),
            rows: rows.to_vec(),
        }
    }
}

/// What a dataset artifact says about its task and splits.
#[derive(Debug, Clone)]
pub struct DatasetInfo {
    pub task: String,
    /// Label names in class-id order; empty for regression.
    pub labels: Vec<String>,
    pub regression: bool,
    pub scoring: Scoring,
    pub pad_id: i64,
    /// Split names with whether they are labelled, in the artifact's order.
    pub splits: Vec<(String, bool)>,
}

impl DatasetInfo {
    pub fn from_artifact(artifact: &Artifact) -> Result<DatasetInfo> {
        let meta = &artifact.meta;
        let splits = meta["splits"].as_object().context("the dataset artifact lists no splits")?;
        Ok(DatasetInfo {
            task: meta["task"].as_str().context("the dataset artifact names no task")?.to_string(),
            labels: meta["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect(),
            regression: meta["regression"].as_bool().unwrap_or(false),
            scoring: serde_json::from_value(meta["scoring"].clone())
                .context("the dataset artifact has no scoring")?,
            pad_id: meta["pad_id"].as_i64().unwrap_or(0),
            splits: splits
                .iter()
                .map(|(name, s)| (name.clone(), s["labelled"].as_bool().unwrap_or(false)))
                .collect(),
        })
    }

    /// Outputs of the head: one per class, one for regression.
    pub fn num_labels(&self) -> i64 {
        if self.regression {
            1
        } else {
            self.labels.len() as i64
        }
    }

    /// The labelled splits results are reported on: all but train and the validation split
    /// held out of it (dev, or MNLI's dev_matched and dev_mismatched).
    pub fn eval_splits(&self) -> Vec<&str> {
        self.splits
            .iter()
            .filter(|(n, labelled)| *labelled && n != TRAIN && n != VALIDATION)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The split training selects its best parameters on: the validation split held out of
    /// train when there is one (so that the reported split is not peeked at), else the first
    /// reported split.
    pub fn selection_split(&self) -> Option<&str> {
        match self.splits.iter().any(|(n, _)| n == VALIDATION) {
            true => Some(VALIDATION),
            false => self.eval_splits().first().copied(),
        }
    }
}

/// The split stages train on.
pub const TRAIN: &str = "train";
/// The split held out of train for model selection (`glue.load`'s `validation_fraction`).
pub const VALIDATION: &str = "validation";

#[cfg(test)]
mod tests {
    use super::*;

    fn split(lengths: &[usize]) -> TokenizedSplit {
        let encodings: Vec<Encoding> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| Encoding { ids: vec![i as i64 + 1; n], type_ids: vec![0; n] })
            .collect();
        TokenizedSplit::from_encodings(&encodings, Labels::Classes((0..lengths.len() as i64).collect()))
    }

    #[test]
    fn batches_pad_to_their_longest_sequence() {
        let s = split(&[2, 5, 3]);
        let b = s.batch(&[0, 2], 0, Device::Cpu);
        assert_eq!(b.input_ids.size(), [2, 3]);
        assert_eq!(Vec::<i64>::try_from(b.input_ids.view([-1])).unwrap(), [1, 1, 0, 3, 3, 3]);
        assert_eq!(Vec::<i64>::try_from(b.attention_mask.view([-1])).unwrap(), [1, 1, 0, 1, 1, 1]);
        assert_eq!(Vec::<i64>::try_from(b.labels.unwrap()).unwrap(), [0, 2]);
        assert_eq!(b.rows, [0, 2]);
    }

    #[test]
    fn shuffling_depends_only_on_the_seed_and_covers_every_row_once() {
        let s = split(&[3; 100]);
        let opts = |seed| BatchOptions { batch_size: 8, shuffle_seed: Some(seed), bucket_by_length: false };
        assert_eq!(s.batch_rows(&opts(1)), s.batch_rows(&opts(1)));
        assert_ne!(s.batch_rows(&opts(1)), s.batch_rows(&opts(2)));
        let mut all: Vec<usize> = s.batch_rows(&opts(1)).concat();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        let plain = BatchOptions { batch_size: 8, shuffle_seed: None, bucket_by_length: false };
        assert_eq!(s.batch_rows(&plain)[0], (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn bucketing_groups_similar_lengths() {
        let lengths: Vec<usize> = (0..400).map(|i| 1 + (i * 37) % 60).collect();
        let s = split(&lengths);
        let padding = |bucket| {
            let opts = BatchOptions { batch_size: 16, shuffle_seed: Some(3), bucket_by_length: bucket };
            s.batch_rows(&opts)
                .iter()
                .map(|rows| {
                    let max = rows.iter().map(|&r| s.seq_len(r)).max().unwrap();
                    rows.iter().map(|&r| max - s.seq_len(r)).sum::<usize>()
                })
                .sum::<usize>()
        };
        assert!(padding(true) * 5 < padding(false), "{} vs {}", padding(true), padding(false));
    }

    #[test]
    fn round_trips_through_artifact_tensors() {
        let s = split(&[2, 4]);
        let mut artifact = Artifact::new("dataset", serde_json::json!({}));
        for (name, t) in s.to_tensors("train") {
            artifact.tensors.insert(name, t);
        }
        assert_eq!(TokenizedSplit::from_artifact(&artifact, "train").unwrap(), s);
        assert!(TokenizedSplit::from_artifact(&artifact, "dev").is_err());
    }
}
