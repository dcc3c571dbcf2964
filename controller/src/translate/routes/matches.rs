//! Gateway API matches and filters, as the generated types spell them, to the config model's.

use super::enum_text;
use gateway_api::apis::experimental::httproutes::{HttpRouteRulesFiltersRequestHeaderModifier, HttpRouteRulesMatches};
use nodus_config::{
    HeaderMatch, HeaderModifier, HttpRouteMatch, NameValue, PathMatch, PathModifier, QueryParamMatch, StringMatch,
};

pub(super) fn header_modifier(m: &HttpRouteRulesFiltersRequestHeaderModifier) -> HeaderModifier {
    HeaderModifier {
        set: m.set.iter().flatten().map(|h| NameValue { name: h.name.clone(), value: h.value.clone() }).collect(),
        add: m.add.iter().flatten().map(|h| NameValue { name: h.name.clone(), value: h.value.clone() }).collect(),
        remove: m.remove.clone().unwrap_or_default(),
    }
}

pub(super) fn path_modifier(kind: &str, full: &Option<String>, prefix: &Option<String>) -> Option<PathModifier> {
    match kind {
        "ReplaceFullPath" => full.clone().map(PathModifier::ReplaceFullPath),
        "ReplacePrefixMatch" => prefix.clone().map(PathModifier::ReplacePrefixMatch),
        _ => None,
    }
}

pub(super) fn string_match(kind: &str, value: &str) -> StringMatch {
    match kind {
        "RegularExpression" => StringMatch::RegularExpression(value.to_string()),
        _ => StringMatch::Exact(value.to_string()),
    }
}

pub(super) fn http_match(m: &HttpRouteRulesMatches) -> HttpRouteMatch {
    let path = m.path.as_ref().map(|p| {
        let value = p.value.clone().unwrap_or_else(|| "/".to_string());
        match p.r#type.as_ref().map(enum_text).as_deref() {
            Some("Exact") => PathMatch::Exact(value),
            Some("RegularExpression") => PathMatch::RegularExpression(value),
            _ => PathMatch::PathPrefix(value),
        }
    });
    HttpRouteMatch {
        // The spec's default: a prefix match on "/".
        path: Some(path.unwrap_or_else(|| PathMatch::PathPrefix("/".to_string()))),
        headers: m
            .headers
            .iter()
            .flatten()
            .map(|h| HeaderMatch {
                name: h.name.clone(),
                value: string_match(&h.r#type.as_ref().map(enum_text).unwrap_or_default(), &h.value),
            })
            .collect(),
        query_params: m
            .query_params
            .iter()
            .flatten()
            .map(|q| QueryParamMatch {
                name: q.name.clone(),
                value: string_match(&q.r#type.as_ref().map(enum_text).unwrap_or_default(), &q.value),
            })
            .collect(),
        method: m.method.as_ref().map(enum_text),
    }
}
