//! SPIFFE IDs of workloads.

use crate::IdentityError;
use std::fmt;
use std::str::FromStr;

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`: a workload's identity is its
/// namespace and service account, as in Istio and Linkerd.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// Trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

impl SpiffeId {
    /// The identity of `namespace/service_account` in `trust_domain`.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || IdentityError::InvalidSpiffeId(text.to_string());
        let rest = text.strip_prefix("spiffe://").ok_or_else(invalid)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [domain, "ns", namespace, "sa", account]
                if !domain.is_empty() && !namespace.is_empty() && !account.is_empty() =>
            {
                Ok(Self::new(domain, namespace, account))
            }
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id: SpiffeId = "spiffe://cluster.local/ns/demo/sa/web".parse().unwrap();
        assert_eq!(id, SpiffeId::new("cluster.local", "demo", "web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/web");
        for bad in [
            "http://x/ns/a/sa/b",
            "spiffe://x/ns/a",
            "spiffe:///ns/a/sa/b",
            "spiffe://x/ns/a/sa/b/c",
            "spiffe://x/ns//sa/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}
