//! What a usable embedding is: the one check that import and store loading both apply to
//! an embedding that came from a file, before it can reach a head or the trainer.
//!
//! A record can be checksum-valid and still hold garbage (made by hand, by a bug, or by
//! another program): NaN makes every prediction "unknown (-inf)", a wrong length breaks
//! every later capture, a zero vector has no direction to normalise. Such an embedding is
//! refused with a message saying which rule it breaks. Must not: read files or decide what
//! happens to a refused sample (callers quarantine or refuse the import).

/// Smallest accepted Euclidean norm: below it the vector has no usable direction (a real
/// MobileNetV2 embedding of any image is far above it).
pub const MIN_NORM: f64 = 1e-6;

/// Largest accepted Euclidean norm. The backbone's pooled ReLU6 features lie in [0, 6], so
/// a real 1280-d embedding has a norm of at most 6·√1280 ≈ 215; the bound leaves a wide
/// margin for other backbones while refusing values that overflow `f32` arithmetic.
pub const MAX_NORM: f64 = 1e4;

/// Why an embedding is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbeddingError {
    /// No values at all.
    #[error("embedding is empty")]
    Empty,
    /// Not the backbone's length.
    #[error("embedding has {got} values, the backbone gives {want}")]
    WrongDim {
        /// Expected length.
        want: usize,
        /// Length found.
        got: usize,
    },
    /// NaN or an infinity.
    #[error("embedding value {index} is {value} (not a finite number)")]
    NotFinite {
        /// Position of the first bad value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// Norm outside [`MIN_NORM`]..=[`MAX_NORM`].
    #[error("embedding norm {norm:.3e} is outside the plausible range {MIN_NORM:e}..={MAX_NORM:e}")]
    Norm {
        /// The norm found.
        norm: f64,
    },
}

/// Check `e`: non-empty, `want_dim` long when given, every value finite, norm plausible.
pub fn check(e: &[f32], want_dim: Option<usize>) -> Result<(), EmbeddingError> {
    if e.is_empty() {
        return Err(EmbeddingError::Empty);
    }
    if let Some(want) = want_dim
        && e.len() != want
    {
        return Err(EmbeddingError::WrongDim { want, got: e.len() });
    }
    if let Some((index, &value)) = e.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EmbeddingError::NotFinite { index, value });
    }
    // In f64: the squares of large finite f32 values overflow f32.
    let norm = e.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    if !(MIN_NORM..=MAX_NORM).contains(&norm) {
        return Err(EmbeddingError::Norm { norm });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_looking_embeddings_pass_and_every_rule_is_enforced() {
        let ok: Vec<f32> = (0..1280).map(|i| (i % 7) as f32 * 0.3).collect();
        check(&ok, Some(1280)).unwrap();
        check(&[6.0; 1280], None).unwrap();
        assert_eq!(check(&[], None), Err(EmbeddingError::Empty));
        assert_eq!(
            check(&ok[..3], Some(1280)),
            Err(EmbeddingError::WrongDim { want: 1280, got: 3 })
        );
        let mut bad = ok.clone();
        bad[9] = f32::NAN;
        assert!(matches!(
            check(&bad, None),
            Err(EmbeddingError::NotFinite { index: 9, .. })
        ));
        bad[9] = f32::NEG_INFINITY;
        assert!(
            check(&bad, None)
                .unwrap_err()
                .to_string()
                .contains("value 9")
        );
        assert!(matches!(
            check(&[0.0; 4], None),
            Err(EmbeddingError::Norm { .. })
        ));
        assert!(matches!(
            check(&[3e38, 3e38], None),
            Err(EmbeddingError::Norm { .. })
        ));
    }
}
