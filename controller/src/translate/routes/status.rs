//! What route status says: the conditions of a route for each of its Service parents.

/// One status condition (`Accepted` or `ResolvedRefs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `True` or `False`.
    pub status: bool,
    /// The spec's reason.
    pub reason: String,
    /// A human-readable explanation.
    pub message: String,
}

impl Condition {
    pub(super) fn ok(reason: &str) -> Self {
        Self { status: true, reason: reason.to_string(), message: String::new() }
    }

    pub(super) fn failed(reason: &str, message: impl Into<String>) -> Self {
        Self { status: false, reason: reason.to_string(), message: message.into() }
    }
}

/// A `parentRef` as written in the route (status echoes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    /// `group`, if set.
    pub group: Option<String>,
    /// `kind`, if set.
    pub kind: Option<String>,
    /// `namespace`, if set.
    pub namespace: Option<String>,
    /// `name`.
    pub name: String,
    /// `port`, if set.
    pub port: Option<i32>,
    /// `sectionName`, if set.
    pub section_name: Option<String>,
}

/// The status of a route for one of its Service parents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentStatus {
    /// The parent as the route names it.
    pub parent_ref: ParentRef,
    /// `Accepted`.
    pub accepted: Condition,
    /// `ResolvedRefs`.
    pub resolved_refs: Condition,
}

/// A route's status: one entry per Service parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteStatus {
    /// The route's `metadata.generation` these conditions describe.
    pub generation: Option<i64>,
    /// Per parent.
    pub parents: Vec<ParentStatus>,
}
