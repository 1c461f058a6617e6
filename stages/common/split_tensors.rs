//! Reading one split's per-split tensor file (`features@<split>`): the tensor `<split>`
//! (F32 [segments, n_mels, frames]) and `<split>_labels` (U32 [segments]), checked against the segment table,
//! so that every stage reading such a file trusts rows and labels for the same reasons.

use std::path::Path;

use super::tables::SegmentTable;
use super::tensors::{Dtype, Tensor, TensorFile, TensorSpec, TensorWriter};
use genrelab_contract::{Split, StageError};

/// The base name of the per-split feature artifacts (`features@train`, ...), made by the `features` stage.
pub const FEATURES: &str = "features";

/// Writes one split's per-split tensor file in one go (the `features` stage streams the same layout).
pub fn write_split(
    path: &Path,
    split: Split,
    dims: (usize, usize),
    values: &[f32],
    labels: &[u32],
) -> Result<(), StageError> {
    let mut w = TensorWriter::create(
        path,
        vec![
            TensorSpec::new(split.name(), Dtype::F32, vec![labels.len(), dims.0, dims.1]),
            TensorSpec::new(format!("{split}_labels"), Dtype::U32, vec![labels.len()]),
        ],
    )?;
    w.write_f32(values)?;
    w.write_u32(labels)?;
    w.finish()
}

/// One split's values and labels; rows follow the segment table's order for that split.
pub struct SplitTensor<'a> {
    pub values: Tensor<'a>,
    pub labels: Vec<u32>,
}

impl SplitTensor<'_> {
    /// `(n_mels, frames)` of one segment.
    pub fn dims(&self) -> (usize, usize) {
        (self.values.shape[1], self.values.shape[2])
    }
}

/// Opens `split` from `file` (the input artifact `artifact`, at `path`) and checks its dtype and shape, that
/// it has one row per segment the table lists for that split, and that every label agrees with the table.
pub fn open_split<'a>(
    file: &'a TensorFile,
    path: &Path,
    artifact: &str,
    segments: &SegmentTable,
    split: Split,
) -> Result<SplitTensor<'a>, StageError> {
    let values = file.tensor(split.name())?;
    if values.dtype != Dtype::F32 || values.shape.len() != 3 || values.shape[1..].contains(&0) {
        return Err(StageError::bad_file(
            path,
            format!(
                "tensor `{split}` must be F32 [segments, n_mels, frames] with non-empty segments, found {:?} {:?}",
                values.dtype, values.shape
            ),
        ));
    }
    let listed: Vec<_> = segments.of_split(split).collect();
    if values.rows() != listed.len() {
        return Err(StageError::bad_input(
            artifact,
            format!(
                "tensor `{split}` has {} rows but the segment table lists {} {split} segments",
                values.rows(),
                listed.len()
            ),
        ));
    }
    let labels_name = format!("{split}_labels");
    let labels_tensor = file.tensor(&labels_name)?;
    if labels_tensor.dtype != Dtype::U32 || labels_tensor.shape != [listed.len()] {
        return Err(StageError::bad_file(
            path,
            format!(
                "tensor `{labels_name}` must be U32 [{}], found {:?} {:?}",
                listed.len(),
                labels_tensor.dtype,
                labels_tensor.shape
            ),
        ));
    }
    let labels = labels_tensor.to_u32();
    if let Some((seg, label)) = listed.iter().zip(&labels).find(|(seg, &l)| seg.label != l) {
        return Err(StageError::bad_input(
            artifact,
            format!(
                "tensor `{labels_name}` gives segment `{}` label {label}, the segment table {}",
                seg.id, seg.label
            ),
        ));
    }
    Ok(SplitTensor { values, labels })
}
