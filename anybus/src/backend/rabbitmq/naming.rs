//! The names of the queues anybus declares, and why no two of them can be the same.
//!
//! Every queue belongs to one topic and is named `{topic}.{last word}`. The last word says whose
//! queue it is:
//!
//! - a consumer group's: the group's name with `%` written `%25` and `.` written `%2E`
//!   (`orders.created.billing`; the group `eu.billing` gives `orders.created.eu%2Ebilling`);
//! - the wait queue of a retry topic: `%wait`; the private queue of an app's reply topic:
//!   `%reply`. In a group's word a `%` is always followed by `25` or `2E`, so these are never a
//!   group's.
//!
//! The last word has no `.`, so the last `.` of a name splits it back into its topic and its
//! word, and the word into its group or helper: two different (topic, group) pairs, or a pair
//! and a helper, never share a queue. (Before, a group's queue was `{topic}.{group}`, so topic
//! `a` with group `b.c` and topic `a.b` with group `c` shared `a.b.c`; a group without `%` or
//! `.` keeps the name it had, see [`superseded_group_queue`].)
//!
//! Names are at most 255 bytes (AMQP's limit, checked where a topology is built), and the
//! encoding only lengthens groups that have `%` or `.`.

/// The last word of a retry topic's wait queue.
const WAIT: &str = "%wait";
/// The last word of the queue of an app's private reply topic.
const REPLY: &str = "%reply";

/// The queue of `group` on `topic`: `{topic}.{group}`, with `%` and `.` of the group encoded.
pub fn group_queue(topic: &str, group: &str) -> String {
    let mut name = String::with_capacity(topic.len() + 1 + group.len());
    name.push_str(topic);
    name.push('.');
    for c in group.chars() {
        match c {
            '%' => name.push_str("%25"),
            '.' => name.push_str("%2E"),
            c => name.push(c),
        }
    }
    name
}

/// The wait queue of the retry topic `topic`: `{topic}.%wait`.
pub fn wait_queue(topic: &str) -> String {
    format!("{topic}.{WAIT}")
}

/// The private queue of an app's reply topic `topic`: `{topic}.%reply`.
pub fn reply_queue(topic: &str) -> String {
    format!("{topic}.{REPLY}")
}

/// The name earlier versions gave the queue of `group` on `topic`, when it differs from
/// [`group_queue`]'s: `{topic}.{group}` for a group with `%` or `.` in it.
pub fn superseded_group_queue(topic: &str, group: &str) -> Option<String> {
    group
        .contains(['%', '.'])
        .then(|| format!("{topic}.{group}"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What a name says it is: its topic, and its group or helper word.
    #[derive(Debug, PartialEq, Eq)]
    enum Owner {
        Group(String, String),
        Wait(String),
        Reply(String),
    }

    /// Reads a name back; that this is a function of the name alone is the proof that names
    /// are unique.
    fn owner(name: &str) -> Owner {
        let (topic, word) = name.rsplit_once('.').expect("every name has a `.`");
        let topic = topic.to_owned();
        match word {
            WAIT => Owner::Wait(topic),
            REPLY => Owner::Reply(topic),
            encoded => Owner::Group(topic, decoded(encoded)),
        }
    }

    fn decoded(word: &str) -> String {
        let mut group = String::new();
        let mut rest = word;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("%25") {
                group.push('%');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("%2E") {
                group.push('.');
                rest = after;
            } else {
                assert_ne!(c, '%', "a lone `%` in a group's word: {word}");
                group.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        group
    }

    #[test]
    fn plain_groups_keep_their_names_and_dotted_ones_are_encoded() {
        assert_eq!(
            group_queue("orders.created", "billing"),
            "orders.created.billing"
        );
        assert_eq!(superseded_group_queue("orders.created", "billing"), None);
        assert_eq!(group_queue("a", "b.c"), "a.b%2Ec");
        assert_eq!(group_queue("a.b", "c"), "a.b.c");
        assert_eq!(group_queue("t", "50%.x"), "t.50%25%2Ex");
        assert_eq!(superseded_group_queue("a", "b.c").as_deref(), Some("a.b.c"));
        assert_eq!(wait_queue("o.retry.g"), "o.retry.g.%wait");
        assert_eq!(reply_queue("anybus.replies.1"), "anybus.replies.1.%reply");
    }

    #[test]
    fn a_group_named_like_a_helper_is_still_a_group() {
        assert_ne!(group_queue("t", "%wait"), wait_queue("t"));
        assert_ne!(group_queue("t", "wait"), wait_queue("t"));
        assert_ne!(group_queue("t", "%reply"), reply_queue("t"));
        assert_eq!(
            owner(&group_queue("t", "%wait")),
            Owner::Group("t".into(), "%wait".into())
        );
    }

    /// Topics and groups from the characters that matter: the separator, the escape and what
    /// follows it.
    fn part() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a.%25Ewity]{0,8}").expect("a valid pattern")
    }

    proptest! {
        #[test]
        fn every_name_says_whose_it_is(topic in part(), group in part()) {
            prop_assert_eq!(
                owner(&group_queue(&topic, &group)),
                Owner::Group(topic.clone(), group)
            );
            prop_assert_eq!(owner(&wait_queue(&topic)), Owner::Wait(topic.clone()));
            prop_assert_eq!(owner(&reply_queue(&topic)), Owner::Reply(topic));
        }

        #[test]
        fn two_pairs_share_a_queue_only_if_they_are_the_same(
            a in (part(), part()),
            b in (part(), part()),
        ) {
            if group_queue(&a.0, &a.1) == group_queue(&b.0, &b.1) {
                prop_assert_eq!(a, b);
            }
        }
    }
}
