//! The recommendation service: builds a profile for every new user from their interests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anybus::{HandlerError, State};

use crate::events::UserRegistered;
use crate::lock;
use crate::story::{Step, Story};

/// Which product each interest suggests.
pub const SUGGESTIONS: &[(&str, &str)] =
    &[("reading", "book"), ("coffee", "mug"), ("design", "lamp")];

/// What the shop recommends to one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The user.
    pub user_id: String,
    /// Products to recommend, best first; empty means "show the bestsellers".
    pub recommended: Vec<String>,
}

/// The profiles (in memory), by user id; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Profiles(Arc<Mutex<BTreeMap<String, Profile>>>);

impl Profiles {
    /// The profile of `user_id`, if it was built.
    pub fn get(&self, user_id: &str) -> Option<Profile> {
        lock(&self.0).get(user_id).cloned()
    }

    /// Stores `profile` unless its user has one; says whether it stored.
    fn insert_new(&self, profile: Profile) -> bool {
        let mut profiles = lock(&self.0);
        if profiles.contains_key(&profile.user_id) {
            return false;
        }
        profiles.insert(profile.user_id.clone(), profile);
        true
    }
}

/// The profile a user's interests suggest.
pub fn profile_for(user: &UserRegistered) -> Profile {
    let mut recommended: Vec<String> = Vec::new();
    for interest in &user.interests {
        for (topic, sku) in SUGGESTIONS {
            if interest == topic && !recommended.iter().any(|r| r == sku) {
                recommended.push((*sku).to_owned());
            }
        }
    }
    Profile {
        user_id: user.user_id.clone(),
        recommended,
    }
}

/// Builds the recommendation profile of a new user. A redelivered [`UserRegistered`] leaves the
/// profile as it is.
#[anybus::subscriber(topic = "users.registered", group = "recommendations")]
pub async fn build_profile(
    event: UserRegistered,
    profiles: State<Profiles>,
    story: State<Story>,
) -> Result<(), HandlerError> {
    let profile = profile_for(&event);
    let picks = if profile.recommended.is_empty() {
        "bestsellers".to_owned()
    } else {
        profile.recommended.join(", ")
    };
    if profiles.insert_new(profile) {
        story.record(
            &event.user_id,
            Step::ProfileBuilt,
            format!("recommendation profile built ({picks})"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(interests: &[&str]) -> UserRegistered {
        UserRegistered {
            user_id: "u-1".into(),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            interests: interests.iter().map(|i| (*i).to_owned()).collect(),
        }
    }

    #[test]
    fn interests_pick_products() {
        let profile = profile_for(&user(&["design", "chess", "reading", "design"]));
        assert_eq!(profile.recommended, ["lamp", "book"]);
        assert!(profile_for(&user(&[])).recommended.is_empty());
    }

    #[tokio::test]
    async fn a_second_event_keeps_the_first_profile() {
        let (profiles, story) = (Profiles::default(), Story::default());
        for interests in [&["coffee"][..], &["design"][..]] {
            build_profile(
                user(interests),
                State(Arc::new(profiles.clone())),
                State(Arc::new(story.clone())),
            )
            .await
            .unwrap();
        }
        assert_eq!(profiles.get("u-1").unwrap().recommended, ["mug"]);
        assert_eq!(story.line("u-1"), "recommendation profile built (mug)");
    }
}
