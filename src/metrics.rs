//! Classification metrics: accuracy, per-class accuracy, confusion matrix; and latency
//! summaries (median, p95) for benchmarks.
//! Pure functions over plain data.

use serde::Serialize;

/// Evaluation summary over a labelled set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evaluation {
    /// Fraction correct (top-1, threshold ignored), 0..1.
    pub accuracy: f32,
    /// Accuracy per class name.
    pub per_class: Vec<ClassAccuracy>,
    /// `confusion[true][predicted]` counts, in `classes` order.
    pub confusion: Vec<Vec<usize>>,
    /// Class names.
    pub classes: Vec<String>,
    /// Examples evaluated.
    pub count: usize,
    /// Examples whose top probability was below the head's threshold ("unknown").
    pub unknown: usize,
}

/// One class's accuracy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassAccuracy {
    /// Class name.
    pub class: String,
    /// Fraction of this class's examples predicted correctly.
    pub accuracy: f32,
    /// Examples of this class.
    pub count: usize,
}

/// Build an [`Evaluation`] from (true, predicted, known) triples.
pub fn evaluate(classes: &[String], outcomes: &[(usize, usize, bool)]) -> Evaluation {
    let c = classes.len();
    let mut confusion = vec![vec![0usize; c]; c];
    let mut unknown = 0;
    for &(t, p, known) in outcomes {
        confusion[t][p] += 1;
        unknown += usize::from(!known);
    }
    let correct: usize = (0..c).map(|k| confusion[k][k]).sum();
    let per_class = (0..c)
        .map(|k| {
            let n: usize = confusion[k].iter().sum();
            ClassAccuracy {
                class: classes[k].clone(),
                accuracy: if n == 0 {
                    0.0
                } else {
                    confusion[k][k] as f32 / n as f32
                },
                count: n,
            }
        })
        .collect();
    Evaluation {
        accuracy: if outcomes.is_empty() {
            0.0
        } else {
            correct as f32 / outcomes.len() as f32
        },
        per_class,
        confusion,
        classes: classes.to_vec(),
        count: outcomes.len(),
        unknown,
    }
}

/// Median and 95th percentile (nearest rank) of samples, in the samples' unit.
pub fn median_p95(samples: &[f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let rank = ((0.95 * v.len() as f64).ceil() as usize).clamp(1, v.len());
    (median, v[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_and_accuracies() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let e = evaluate(
            &classes,
            &[(0, 0, true), (0, 1, true), (1, 1, false), (1, 1, true)],
        );
        assert_eq!(e.confusion, vec![vec![1, 1], vec![0, 2]]);
        assert_eq!(e.accuracy, 0.75);
        assert_eq!(e.per_class[0].accuracy, 0.5);
        assert_eq!(e.per_class[1].accuracy, 1.0);
        assert_eq!(e.unknown, 1);
    }

    #[test]
    fn median_and_p95() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(median_p95(&v), (50.5, 95.0));
        assert_eq!(median_p95(&[3.0]), (3.0, 3.0));
    }
}
