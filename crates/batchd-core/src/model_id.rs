//! Model ids as Bedrock users write them, resolved in one place: plain ids, cross-region
//! inference-profile ids (`us.`, `eu.`, `apac.`, `global.`, ...), and ARNs of foundation
//! models, inference profiles, application inference profiles or any other Bedrock resource.

/// The prefixes of Bedrock's cross-region (system-defined) inference profile ids.
pub const CROSS_REGION_PREFIXES: &[&str] = &[
    "us.", "eu.", "apac.", "global.", "us-gov.", "ca.", "jp.", "au.",
];

/// A model id as a job or record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelId<'a> {
    raw: &'a str,
}

impl<'a> ModelId<'a> {
    pub fn new(raw: &'a str) -> Self {
        Self { raw }
    }

    /// The id as written.
    pub fn raw(self) -> &'a str {
        self.raw
    }

    /// For a Bedrock ARN (`arn:<partition>:bedrock:<region>:<account>:<type>/<id>`), the
    /// resource id after the last `/`; any other id as written.
    pub fn resource(self) -> &'a str {
        match self.raw.strip_prefix("arn:") {
            Some(rest) if rest.contains(":bedrock:") => match self.raw.rsplit_once('/') {
                Some((_, id)) if !id.is_empty() => id,
                _ => self.raw,
            },
            _ => self.raw,
        }
    }

    /// The resource without a cross-region prefix: the foundation model a profile routes to
    /// (an application inference profile's opaque id stays as it is).
    pub fn base(self) -> &'a str {
        let id = self.resource();
        CROSS_REGION_PREFIXES
            .iter()
            .find_map(|p| id.strip_prefix(p).filter(|rest| !rest.is_empty()))
            .unwrap_or(id)
    }

    /// The names a configured model may carry, most specific first and without repeats: the
    /// id as written, the ARN's resource id, the base model id.
    pub fn candidates(self) -> impl Iterator<Item = &'a str> {
        let (raw, resource, base) = (self.raw, self.resource(), self.base());
        [
            Some(raw),
            (resource != raw).then_some(resource),
            (base != resource).then_some(base),
        ]
        .into_iter()
        .flatten()
    }

    /// The first candidate that `lookup` knows: a configured model for any form of its id.
    pub fn resolve<T>(self, lookup: impl FnMut(&str) -> Option<T>) -> Option<T> {
        self.candidates().find_map(lookup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "anthropic.claude-3-haiku-20240307-v1:0";

    #[test]
    fn every_form_reaches_the_base_model() {
        for raw in [
            BASE,
            "us.anthropic.claude-3-haiku-20240307-v1:0",
            "eu.anthropic.claude-3-haiku-20240307-v1:0",
            "apac.anthropic.claude-3-haiku-20240307-v1:0",
            "global.anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws-us-gov:bedrock:us-gov-west-1:123456789012:inference-profile/us-gov.anthropic.claude-3-haiku-20240307-v1:0",
        ] {
            assert_eq!(ModelId::new(raw).base(), BASE, "{raw}");
        }
    }

    #[test]
    fn candidates_go_from_most_to_least_specific() {
        let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-8b";
        let got: Vec<_> = ModelId::new(arn).candidates().collect();
        assert_eq!(got, [arn, "us.meta.llama3-8b", "meta.llama3-8b"]);
        let got: Vec<_> = ModelId::new("meta.llama3-8b").candidates().collect();
        assert_eq!(got, ["meta.llama3-8b"]);
        let app =
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6";
        let got: Vec<_> = ModelId::new(app).candidates().collect();
        assert_eq!(
            got,
            [app, "a1b2c3d4e5f6"],
            "an opaque profile id resolves only as configured"
        );
    }

    #[test]
    fn the_most_specific_configured_name_wins() {
        let configured = ["us.m.x", "m.x"];
        let find = |id: &str| configured.iter().position(|c| *c == id);
        assert_eq!(ModelId::new("us.m.x").resolve(find), Some(0));
        assert_eq!(ModelId::new("eu.m.x").resolve(find), Some(1));
        assert_eq!(ModelId::new("m.y").resolve(find), None);
    }

    #[test]
    fn look_alikes_stay_as_written() {
        // Not Bedrock ARNs, or nothing after a prefix: no stripping.
        for raw in [
            "arn:aws:s3:::bucket/key",
            "us.",
            "user.model",
            "arn:aws:bedrock:x:y:z/",
        ] {
            assert_eq!(ModelId::new(raw).base(), raw, "{raw}");
        }
    }
}
