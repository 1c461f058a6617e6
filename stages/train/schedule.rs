//! The two epoch-end callbacks the study trained with, with Keras 3's exact rules
//! (`keras/src/callbacks/early_stopping.py`, `reduce_lr_on_plateau.py`), as plain serialisable state so a
//! checkpoint can carry them. "Best so far" starts as "none" rather than ±infinity, which JSON cannot hold.

use serde::{Deserialize, Serialize};

/// `EarlyStopping(monitor="val_accuracy", mode="max", min_delta=0, restore_best_weights=True)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub patience: usize,
    /// Best value so far; `None` until one compares greater than minus infinity.
    pub best: Option<f64>,
    /// The epoch whose weights are restored. Keras takes the first epoch's even when its value never
    /// counted as an improvement (NaN), so this is set from the first update on.
    pub best_epoch: Option<usize>,
    /// Epochs since the last improvement.
    pub wait: usize,
    pub stopped: bool,
}

/// What an epoch's value meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyStoppingStep {
    /// The weights after this epoch are the new best (take a snapshot).
    pub new_best: bool,
    /// Training ends after this epoch.
    pub stop: bool,
}

impl EarlyStopping {
    pub fn new(patience: usize) -> Self {
        Self {
            patience,
            best: None,
            best_epoch: None,
            wait: 0,
            stopped: false,
        }
    }

    /// Feeds the monitored value after `epoch` (any numbering; `first` marks the run's first epoch,
    /// on which Keras never stops). An improvement is strictly greater than the best so far.
    pub fn update(&mut self, epoch: usize, value: f64, first: bool) -> EarlyStoppingStep {
        let mut new_best = false;
        if self.best_epoch.is_none() {
            self.best_epoch = Some(epoch);
            new_best = true;
        }
        self.wait += 1;
        if self.best.is_none_or(|best| value > best) {
            // A NaN never passes `value > best`; with no best yet Keras compares against -inf.
            if value > f64::NEG_INFINITY {
                self.best = Some(value);
                self.best_epoch = Some(epoch);
                self.wait = 0;
                return EarlyStoppingStep {
                    new_best: true,
                    stop: false,
                };
            }
        }
        let stop = self.wait >= self.patience && !first;
        self.stopped |= stop;
        EarlyStoppingStep { new_best, stop }
    }
}

/// `ReduceLROnPlateau(monitor="val_loss", factor, patience, mode="auto" -> "min", min_delta=1e-4,
/// cooldown=0, min_lr=0)`. Keras' threshold is absolute: an improvement is `value < best - min_delta`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReduceLrOnPlateau {
    pub factor: f64,
    pub patience: usize,
    pub min_delta: f64,
    pub cooldown: usize,
    pub min_lr: f64,
    /// Lowest value so far; `None` stands for Keras' initial +infinity.
    pub best: Option<f64>,
    pub wait: usize,
    pub cooldown_counter: usize,
}

impl ReduceLrOnPlateau {
    /// Keras' defaults for everything but `factor` and `patience`.
    pub fn new(factor: f64, patience: usize) -> Self {
        Self {
            factor,
            patience,
            min_delta: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
            best: None,
            wait: 0,
            cooldown_counter: 0,
        }
    }

    /// Feeds the monitored value at the end of an epoch trained with `learning_rate`; returns the reduced
    /// rate when this epoch triggers a reduction.
    pub fn update(&mut self, value: f64, learning_rate: f64) -> Option<f64> {
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.wait = 0;
        }
        let best = self.best.unwrap_or(f64::INFINITY);
        if value < best - self.min_delta {
            self.best = Some(value);
            self.wait = 0;
            return None;
        }
        if self.cooldown_counter > 0 {
            return None;
        }
        self.wait += 1;
        // Keras compares the rate with the floor rounded to float32.
        if self.wait >= self.patience && learning_rate > f64::from(self.min_lr as f32) {
            self.cooldown_counter = self.cooldown;
            self.wait = 0;
            return Some((learning_rate * self.factor).max(self.min_lr));
        }
        None
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
