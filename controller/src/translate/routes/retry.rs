//! A rule's retry policy, from the experimental `retry` field (GEP-1731) or, on the standard
//! channel that prunes it, from annotations.

use gateway_api::apis::experimental::httproutes::HttpRouteRulesRetry;

/// Annotations that set an HTTPRoute's retry policy (every rule). The standard-channel CRDs
/// have no retry field (GEP-1731 is experimental and pruned), so, as Linkerd does, annotations
/// carry it: `attempts` (1-10) enables retries; `codes` (comma-separated 5xx codes; connection
/// failures are always retried) and `backoff` (a Gateway API duration) are optional.
pub const RETRY_ATTEMPTS_ANNOTATION: &str = "retry.nodus.dev/attempts";
/// Response codes retried, e.g. `502,503,504`.
pub const RETRY_CODES_ANNOTATION: &str = "retry.nodus.dev/codes";
/// Base backoff between attempts, e.g. `25ms`.
pub const RETRY_BACKOFF_ANNOTATION: &str = "retry.nodus.dev/backoff";

pub(super) fn retry_from_annotations(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Option<nodus_config::RetryPolicy>, String> {
    let Some(annotations) = annotations else { return Ok(None) };
    let codes = annotations.get(RETRY_CODES_ANNOTATION);
    let backoff = annotations.get(RETRY_BACKOFF_ANNOTATION);
    let Some(attempts) = annotations.get(RETRY_ATTEMPTS_ANNOTATION) else {
        if codes.is_some() || backoff.is_some() {
            return Err(format!("{RETRY_ATTEMPTS_ANNOTATION} is required with the other retry annotations"));
        }
        return Ok(None);
    };
    let attempts = attempts
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|a| (1..=10).contains(a))
        .ok_or_else(|| format!("{RETRY_ATTEMPTS_ANNOTATION}: {attempts:?} is not a number from 1 to 10"))?;
    let codes = match codes {
        None => Vec::new(),
        Some(text) => text
            .split(',')
            .map(|code| {
                code.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (500..=599).contains(c))
                    .ok_or_else(|| format!("{RETRY_CODES_ANNOTATION}: {code:?} is not a 5xx status code"))
            })
            .collect::<Result<_, _>>()?,
    };
    let backoff = backoff
        .map(|text| {
            nodus_config::parse_gateway_duration(text.trim())
                .map(nodus_config::GatewayDuration)
                .map_err(|e| format!("{RETRY_BACKOFF_ANNOTATION}: {e}"))
        })
        .transpose()?;
    Ok(Some(nodus_config::RetryPolicy { codes, attempts, backoff }))
}

/// A rule's `retry` (GEP-1731, experimental channel): `attempts` retries at most (1 when left
/// out, as the annotations' default), after at least `backoff` each; `codes` (400-599) retried as
/// well as connection failures, which always are. What Nodus cannot honour is refused, named.
pub(super) fn retry_from_field(retry: &HttpRouteRulesRetry) -> Result<nodus_config::RetryPolicy, String> {
    let attempts = match retry.attempts {
        None => 1,
        Some(attempts) => {
            u32::try_from(attempts).ok().filter(|a| *a <= nodus_config::MAX_RETRY_ATTEMPTS).ok_or_else(|| {
                format!(
                    "retry.attempts {attempts} is outside 0-{} (the most Nodus retries)",
                    nodus_config::MAX_RETRY_ATTEMPTS
                )
            })?
        }
    };
    let codes = retry
        .codes
        .iter()
        .flatten()
        .map(|code| {
            u16::try_from(*code)
                .ok()
                .filter(|c| (400..=599).contains(c))
                .ok_or_else(|| format!("retry.codes: {code} is not a status code from 400 to 599"))
        })
        .collect::<Result<_, _>>()?;
    let backoff = retry
        .backoff
        .as_deref()
        .map(|text| {
            nodus_config::parse_gateway_duration(text)
                .map(nodus_config::GatewayDuration)
                .map_err(|e| format!("retry.backoff: {e}"))
        })
        .transpose()?;
    Ok(nodus_config::RetryPolicy { codes, attempts, backoff })
}
