//! `manifest.json.out`: the six documented counters of a finished job, nothing more.

use batchd_core::Counters;
use serde::{Deserialize, Serialize};

/// The manifest written next to a job's output files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub total_record_count: u64,
    pub processed_record_count: u64,
    pub success_record_count: u64,
    pub error_record_count: u64,
    pub input_token_count: u64,
    pub output_token_count: u64,
}

impl From<&Counters> for Manifest {
    fn from(c: &Counters) -> Self {
        Self {
            total_record_count: c.total,
            processed_record_count: c.processed,
            success_record_count: c.success,
            error_record_count: c.error,
            input_token_count: c.input_tokens,
            output_token_count: c.output_tokens,
        }
    }
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising six integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_has_exactly_the_six_fields() {
        let c = Counters {
            total: 5,
            processed: 4,
            success: 3,
            error: 1,
            input_tokens: 10,
            output_tokens: 20,
        };
        let v: serde_json::Value = serde_json::from_slice(&Manifest::from(&c).to_json()).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 6);
        assert_eq!(v["totalRecordCount"], 5);
        assert_eq!(v["processedRecordCount"], 4);
        assert_eq!(v["successRecordCount"], 3);
        assert_eq!(v["errorRecordCount"], 1);
        assert_eq!(v["inputTokenCount"], 10);
        assert_eq!(v["outputTokenCount"], 20);
    }
}
