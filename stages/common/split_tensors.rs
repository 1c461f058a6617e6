//! Reading one split out of a per-split tensor file (`features`): the tensor `<split>`
//! (F32 [segments, n_mels, frames]) and `<split>_labels` (U32 [segments]), checked against the segment table,
//! so that every stage reading such a file trusts rows and labels for the same reasons.

use std::path::Path;

use super::tables::SegmentTable;
use super::tensors::{Dtype, Tensor, TensorFile};
use genrelab_contract::StageError;

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
    split: &str,
) -> Result<SplitTensor<'a>, StageError> {
    let values = file.tensor(split)?;
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
