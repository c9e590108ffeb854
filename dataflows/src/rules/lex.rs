//! The lexer: rule text in, tokens out.
//!
//! Invariant: every token carries the byte offset where it starts, so every
//! later error (the parser's, the checker's) points into the rule text. A
//! number is an exact decimal (at most [`MAX_SCALE`] decimals, under 10^30),
//! never a float; a string allows only the escapes `\"` and `\\`.

use std::fmt;

use super::{err, CmpOp, Decimal, RuleError, MAX_SCALE};

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    Str(String),
    Num(Decimal),
    Op(CmpOp),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "the string {s:?}"),
            Tok::Num(d) => write!(f, "the number {}", show_decimal(d)),
            Tok::Op(op) => write!(f, "`{}`", op_text(*op)),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Dot => f.write_str("`.`"),
        }
    }
}

fn op_text(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "=",
        CmpOp::Ne => "!=",
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
    }
}

pub(super) fn show_decimal(d: &Decimal) -> String {
    if d.scale == 0 {
        return d.mantissa.to_string();
    }
    let p = 10i128.pow(d.scale);
    let sign = if d.mantissa < 0 { "-" } else { "" };
    let m = d.mantissa.abs();
    format!(
        "{sign}{}.{:0width$}",
        m / p,
        m % p,
        width = d.scale as usize
    )
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub(super) kind: Tok,
    pub(super) at: usize,
}

pub(super) fn lex(text: &str) -> Result<Vec<Token>, RuleError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let at = i;
        let after_path = matches!(
            out.last(),
            Some(Token {
                kind: Tok::Ident(_) | Tok::Str(_),
                ..
            })
        );
        let after_dot = matches!(out.last(), Some(Token { kind: Tok::Dot, .. }));
        // A name; after a dot it may start with a digit (`windows.7d`).
        if c.is_ascii_alphabetic() || c == b'_' || (after_dot && c.is_ascii_digit()) {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Token {
                kind: Tok::Ident(text[start..i].to_owned()),
                at,
            });
            continue;
        }
        let single = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Some(Tok::LParen),
            b')' => Some(Tok::RParen),
            b'[' => Some(Tok::LBracket),
            b']' => Some(Tok::RBracket),
            b',' => Some(Tok::Comma),
            b'.' if after_path || !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                Some(Tok::Dot)
            }
            _ => None,
        };
        if let Some(kind) = single {
            out.push(Token { kind, at });
            i += 1;
            continue;
        }
        let two = bytes.get(i + 1) == Some(&b'=');
        let op = match c {
            b'=' => Some((CmpOp::Eq, if two { 2 } else { 1 })),
            b'!' if two => Some((CmpOp::Ne, 2)),
            b'<' if two => Some((CmpOp::Le, 2)),
            b'<' => Some((CmpOp::Lt, 1)),
            b'>' if two => Some((CmpOp::Ge, 2)),
            b'>' => Some((CmpOp::Gt, 1)),
            _ => None,
        };
        if let Some((op, len)) = op {
            out.push(Token {
                kind: Tok::Op(op),
                at,
            });
            i += len;
            continue;
        }
        if c == b'"' {
            let (s, next) = lex_string(text, i)?;
            out.push(Token {
                kind: Tok::Str(s),
                at,
            });
            i = next;
            continue;
        }
        if c.is_ascii_digit() || c == b'-' || c == b'.' {
            let (d, next) = lex_number(text, i)?;
            out.push(Token {
                kind: Tok::Num(d),
                at,
            });
            i = next;
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or('?');
        return err(at, format!("unexpected character {ch:?}"));
    }
    Ok(out)
}

fn lex_string(text: &str, start: usize) -> Result<(String, usize), RuleError> {
    let mut s = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((s, start + 1 + i + 1)),
            '\\' => match chars.next() {
                Some((_, '"')) => s.push('"'),
                Some((_, '\\')) => s.push('\\'),
                Some((j, other)) => {
                    return err(
                        start + 1 + j,
                        format!("unknown escape \\{other}; only \\\" and \\\\ are allowed"),
                    )
                }
                None => break,
            },
            c => s.push(c),
        }
    }
    err(start, "unterminated string: expected a closing `\"`")
}

fn lex_number(text: &str, start: usize) -> Result<(Decimal, usize), RuleError> {
    let bytes = text.as_bytes();
    let mut i = start;
    let negative = bytes[i] == b'-';
    if negative {
        i += 1;
    }
    let mut mantissa: i128 = 0;
    let mut scale = 0u32;
    let mut digits = 0;
    let mut dot = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() {
            if dot {
                scale += 1;
                if scale > MAX_SCALE {
                    return err(start, format!("a number has at most {MAX_SCALE} decimals"));
                }
            }
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(c - b'0')))
                .filter(|m| *m < 10i128.pow(30))
                .ok_or(RuleError {
                    at: start,
                    message: "number too large".into(),
                })?;
            digits += 1;
        } else if c == b'.' && !dot {
            dot = true;
        } else {
            break;
        }
        i += 1;
    }
    if digits == 0 {
        return err(start, "expected a number");
    }
    if i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
        return err(i, "expected a space or an operator after a number");
    }
    Ok((
        Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale,
        },
        i,
    ))
}
