//! Keyset paging for the console's lists: a page is the `n` rows after
//! (or before) a cursor, the key of the row at its edge, never an offset,
//! so a page costs the same however deep it is and rows arriving meanwhile
//! neither repeat nor vanish between pages. The links are plain
//! `<a href>` with the list's filters kept (no JavaScript), `rel="prev"`
//! and `rel="next"`.
//!
//! `?after=KEY` is the page that follows KEY in the list's display order,
//! `?before=KEY` the one that precedes it, `?n=` the page size (default
//! [`DEFAULT_SIZE`], at most [`MAX_SIZE`]). Lists kept in the database
//! (incidents, the alert delivery log) fetch `n + 1` rows with a LIMIT from
//! the cursor; lists the coordinator holds in memory anyway (checks,
//! agents) are sliced by [`Paging::slice`].

use std::collections::HashMap;

/// Rows per page unless `?n=` says otherwise.
pub const DEFAULT_SIZE: usize = 50;
/// The most rows a page shows, whatever `?n=` asks.
pub const MAX_SIZE: usize = 200;

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    First,
    /// The rows after this key in display order.
    After(String),
    /// The rows before this key in display order.
    Before(String),
}

/// A page request: the cursor and the page size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paging {
    pub cursor: Cursor,
    pub size: usize,
}

/// One page in display order, with the cursors of its neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub rows: Vec<T>,
    /// `?before=` of the previous page, when there is one.
    pub prev: Option<String>,
    /// `?after=` of the next page, when there is one.
    pub next: Option<String>,
}

impl Paging {
    /// From a query string's fields (`after`, `before`, `n`); anything
    /// unreadable falls back to the first page of the default size.
    pub fn from_query(q: &HashMap<String, String>) -> Paging {
        let size = q
            .get("n")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .map_or(DEFAULT_SIZE, |n| n.min(MAX_SIZE));
        let cursor = match (q.get("after"), q.get("before")) {
            (Some(a), _) if !a.is_empty() => Cursor::After(a.clone()),
            (_, Some(b)) if !b.is_empty() => Cursor::Before(b.clone()),
            _ => Cursor::First,
        };
        Paging { cursor, size }
    }

    /// Rows to fetch: one more than a page, to know whether more follow.
    pub fn fetch(&self) -> usize {
        self.size + 1
    }

    /// For lists shown newest first by a numeric key (incident id, attempt
    /// seq): the (below, above) bounds a storage query takes. "After" in
    /// display order is below the key; an unreadable key starts from the
    /// newest (or the oldest) end.
    pub fn numeric_bounds(&self) -> (Option<u64>, Option<u64>) {
        let key = |c: &String| c.parse::<u64>().ok();
        match &self.cursor {
            Cursor::First => (None, None),
            Cursor::After(k) => (key(k).or(Some(i64::MAX as u64)), None),
            Cursor::Before(k) => (None, key(k).or(Some(0))),
        }
    }

    /// `rows` as fetched from the cursor: in display order after it (or
    /// from the start), or, for [`Cursor::Before`], in reverse display
    /// order (nearest the cursor first); at most [`Paging::fetch`] of them.
    pub fn settle<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> String) -> Page<T> {
        let more = rows.len() > self.size;
        rows.truncate(self.size);
        match &self.cursor {
            Cursor::First | Cursor::After(_) => {
                let prev = match self.cursor {
                    Cursor::After(_) => rows.first().map(&key),
                    _ => None,
                };
                let next = if more { rows.last().map(&key) } else { None };
                Page { rows, prev, next }
            }
            Cursor::Before(_) => {
                rows.reverse();
                let prev = if more { rows.first().map(&key) } else { None };
                let next = rows.last().map(&key);
                Page { rows, prev, next }
            }
        }
    }

    /// The page of a whole list already in display order, whose keys
    /// increase along it.
    pub fn slice<T>(&self, all: Vec<T>, key: impl Fn(&T) -> String) -> Page<T> {
        let fetched: Vec<T> = match &self.cursor {
            Cursor::First => all.into_iter().take(self.fetch()).collect(),
            Cursor::After(k) => all
                .into_iter()
                .filter(|r| key(r).as_str() > k.as_str())
                .take(self.fetch())
                .collect(),
            Cursor::Before(k) => all
                .into_iter()
                .rev()
                .filter(|r| key(r).as_str() < k.as_str())
                .take(self.fetch())
                .collect(),
        };
        self.settle(fetched, key)
    }
}

/// A console list's address with its filters (empty ones left out), the
/// page size when not the default, and one cursor (`after` or `before`).
pub fn href(
    path: &str,
    filters: &[(&str, String)],
    size: usize,
    cursor: Option<(&str, &str)>,
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in filters {
        if !v.is_empty() {
            q.append_pair(k, v);
        }
    }
    if size != DEFAULT_SIZE {
        q.append_pair("n", &size.to_string());
    }
    if let Some((k, v)) = cursor {
        q.append_pair(k, v);
    }
    let q = q.finish();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    }
}

/// The links of a page: (previous, next, first) as hrefs; `first` when
/// the page is not the first (a way back from a cursor gone stale).
pub struct Links {
    pub prev: Option<String>,
    pub next: Option<String>,
    pub first: Option<String>,
}

impl Links {
    pub fn of<T>(page: &Page<T>, paging: &Paging, path: &str, filters: &[(&str, String)]) -> Links {
        Links {
            prev: page
                .prev
                .as_deref()
                .map(|k| href(path, filters, paging.size, Some(("before", k)))),
            next: page
                .next
                .as_deref()
                .map(|k| href(path, filters, paging.size, Some(("after", k)))),
            first: (paging.cursor != Cursor::First).then(|| href(path, filters, paging.size, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paging(cursor: Cursor, size: usize) -> Paging {
        Paging { cursor, size }
    }

    fn keys(n: u32) -> Vec<String> {
        (1..=n).map(|i| format!("k{i:02}")).collect()
    }

    #[test]
    fn a_list_walks_forward_and_back_without_repeats_or_gaps() {
        let all = keys(7);
        let id = |s: &String| s.clone();
        let first = paging(Cursor::First, 3).slice(all.clone(), id);
        assert_eq!(first.rows, ["k01", "k02", "k03"]);
        assert_eq!(
            (first.prev.as_deref(), first.next.as_deref()),
            (None, Some("k03"))
        );
        let second = paging(Cursor::After("k03".into()), 3).slice(all.clone(), id);
        assert_eq!(second.rows, ["k04", "k05", "k06"]);
        assert_eq!(
            (second.prev.as_deref(), second.next.as_deref()),
            (Some("k04"), Some("k06"))
        );
        let last = paging(Cursor::After("k06".into()), 3).slice(all.clone(), id);
        assert_eq!(last.rows, ["k07"]);
        assert_eq!(last.next, None);
        let back = paging(Cursor::Before("k04".into()), 3).slice(all.clone(), id);
        assert_eq!(back.rows, ["k01", "k02", "k03"]);
        assert_eq!((back.prev, back.next.as_deref()), (None, Some("k03")));
        let back = paging(Cursor::Before("k07".into()), 3).slice(all, id);
        assert_eq!(back.rows, ["k04", "k05", "k06"]);
        assert_eq!(back.prev.as_deref(), Some("k04"));
    }

    #[test]
    fn the_size_is_capped_and_bad_input_is_the_first_page() {
        let q = |pairs: &[(&str, &str)]| {
            Paging::from_query(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(q(&[]), paging(Cursor::First, DEFAULT_SIZE));
        assert_eq!(q(&[("n", "100000")]).size, MAX_SIZE);
        assert_eq!(q(&[("n", "0")]).size, DEFAULT_SIZE);
        assert_eq!(q(&[("n", "x")]).size, DEFAULT_SIZE);
        assert_eq!(q(&[("after", "")]).cursor, Cursor::First);
        assert_eq!(
            q(&[("before", "b"), ("n", "5")]),
            paging(Cursor::Before("b".into()), 5)
        );
    }

    #[test]
    fn links_keep_the_filters_and_the_size() {
        let p = paging(Cursor::After("9".into()), 10);
        let page = Page {
            rows: vec![8u64, 7],
            prev: Some("8".into()),
            next: Some("7".into()),
        };
        let l = Links::of(
            &page,
            &p,
            "/console/incidents",
            &[("state", "active".into()), ("check", String::new())],
        );
        assert_eq!(
            l.prev.as_deref(),
            Some("/console/incidents?state=active&n=10&before=8")
        );
        assert_eq!(
            l.next.as_deref(),
            Some("/console/incidents?state=active&n=10&after=7")
        );
        assert_eq!(
            l.first.as_deref(),
            Some("/console/incidents?state=active&n=10")
        );
        assert_eq!(
            href("/console", &[("q", "a b&c".into())], DEFAULT_SIZE, None),
            "/console?q=a+b%26c"
        );
    }
}
