//! The mailloop agent: probe engine and CLI support.
//!
//! Layers, bottom up: [`transport`] (bytes, TLS, bounded reads) →
//! [`smtp`] and [`imap`] (protocol sessions and their timed step sequences)
//! → [`probe`] (one round trip, the report) → [`output`] (table, JSON,
//! Nagios). [`steps`] times and records every step; [`tls`] holds trust
//! roots and captures server certificates; [`oauth2`] gets the bearer
//! tokens of XOAUTH2 / OAUTHBEARER logins.

pub mod dns;
pub mod imap;
pub mod inspect;
pub mod message;
pub mod oauth2;
pub mod output;
pub mod probe;
pub mod reputation;
pub mod run;
pub mod smtp;
pub mod spf;
pub mod steps;
pub mod telemetry;
mod text;
pub mod tls;
pub mod transport;
