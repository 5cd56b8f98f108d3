//! Class labels: `imagenet_class_index.json` maps the model's output index to `[wnid, label]`.
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error(
        "labels file is not valid JSON of the form {{\"0\": [\"n01440764\", \"tench\"], ...}}: {0}"
    )]
    Format(#[from] serde_json::Error),
    #[error("labels file has no entry for class {0} (classes must be numbered 0..N without gaps)")]
    Gap(usize),
}

/// Labels in output-index order.
#[derive(Debug, Clone)]
pub struct Labels(Vec<String>);

impl Labels {
    pub fn from_json(bytes: &[u8]) -> Result<Self, LabelsError> {
        let map: HashMap<usize, (String, String)> = serde_json::from_slice(bytes)?;
        let labels = (0..map.len())
            .map(|i| {
                map.get(&i)
                    .map(|(_, label)| label.clone())
                    .ok_or(LabelsError::Gap(i))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(labels))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&str> {
        self.0.get(index).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_keras_index_format() {
        let labels =
            Labels::from_json(br#"{"1": ["n2", "goldfish"], "0": ["n1", "tench"]}"#).unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels.get(0), Some("tench"));
        assert_eq!(labels.get(1), Some("goldfish"));
        assert_eq!(labels.get(2), None);
    }

    #[test]
    fn refuses_gaps_and_bad_json() {
        assert!(matches!(
            Labels::from_json(br#"{"0": ["n1", "a"], "2": ["n3", "c"]}"#),
            Err(LabelsError::Gap(1))
        ));
        assert!(matches!(
            Labels::from_json(b"[1,2]"),
            Err(LabelsError::Format(_))
        ));
    }
}
