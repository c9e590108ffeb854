//! The parser: tokens in, the typed tree out, by recursive descent over the
//! grammar in the module essay of [`crate::rules`].
//!
//! Invariant: the parser owns the syntax (precedence, parentheses, lists, the
//! offset of each error); what a name means and which tests apply to it it
//! asks of the checker (`check`), as soon as the name or the test is read, so
//! the first error in the text is the one reported. Nesting is capped at
//! [`MAX_DEPTH`], so a hostile rule cannot overflow the stack.

use super::check::{self, Lit, Operand, Tested};
use super::lex::{lex, Tok, Token};
use super::{err, Expr, Needs, RuleError, MAX_DEPTH};

/// The whole rule: an `or`, then nothing. Returns the tree and what it reads.
pub(super) fn parse(text: &str) -> Result<(Expr, Needs), RuleError> {
    let tokens = lex(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        end: text.len(),
        needs: Needs::default(),
        depth: 0,
    };
    let expr = p.or()?;
    if let Some(t) = p.peek() {
        return err(
            t.at,
            format!(
                "expected `and`, `or` or the end of the rule, found {}",
                t.kind
            ),
        );
    }
    Ok((expr, p.needs))
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
    needs: Needs,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn at(&self) -> usize {
        self.peek().map_or(self.end, |t| t.at)
    }

    fn found(&self) -> String {
        self.peek()
            .map_or_else(|| "the end of the rule".to_owned(), |t| t.kind.to_string())
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Tok::Ident(s), .. }) if s.eq_ignore_ascii_case(k))
    }

    fn eat(&mut self, kind: &Tok) -> bool {
        if self.peek().is_some_and(|t| &t.kind == kind) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, kind: Tok, what: &str) -> Result<(), RuleError> {
        if self.eat(&kind) {
            Ok(())
        } else {
            err(
                self.at(),
                format!("expected {what}, found {}", self.found()),
            )
        }
    }

    fn or(&mut self) -> Result<Expr, RuleError> {
        self.chain("or", Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Expr, RuleError> {
        self.chain("and", Self::unary, Expr::And)
    }

    /// `operand (keyword operand)*`: one operand as it is, several joined by `join`.
    fn chain(
        &mut self,
        keyword: &str,
        mut operand: impl FnMut(&mut Self) -> Result<Expr, RuleError>,
        join: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr, RuleError> {
        let mut v = vec![operand(self)?];
        while self.keyword(keyword) {
            self.pos += 1;
            v.push(operand(self)?);
        }
        Ok(if v.len() == 1 {
            v.pop().expect("one")
        } else {
            join(v)
        })
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(self.at(), format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let e = if self.keyword("not") {
            self.pos += 1;
            Expr::Not(Box::new(self.unary()?))
        } else if self.eat(&Tok::LParen) {
            let e = self.or()?;
            self.expect(Tok::RParen, "`)`")?;
            e
        } else if self.keyword("true") {
            self.pos += 1;
            Expr::Const(true)
        } else if self.keyword("false") {
            self.pos += 1;
            Expr::Const(false)
        } else {
            self.test()?
        };
        self.depth -= 1;
        Ok(e)
    }

    /// An operand and the test on it; the checker builds the test once its
    /// parts are read.
    fn test(&mut self) -> Result<Expr, RuleError> {
        let at = self.at();
        let (operand, name) = self.operand()?;
        let tested = Tested {
            operand,
            name,
            at,
            op_at: self.at(),
        };
        if self.keyword("exists") {
            self.pos += 1;
            return tested.exists();
        }
        if self.keyword("contains") {
            self.pos += 1;
            let lit_at = self.at();
            let lit = self.literal()?;
            return tested.contains(lit, lit_at);
        }
        if self.keyword("in") {
            self.pos += 1;
            let lits = self.literal_list()?;
            return tested.in_list(lits);
        }
        let op = match self.peek() {
            Some(Token {
                kind: Tok::Op(op), ..
            }) => *op,
            _ => {
                let name = &tested.name;
                return err(
                    tested.op_at,
                    format!(
                        "expected a comparison (= != < <= > >=), `in`, `contains` or `exists` after `{name}`, found {}",
                        self.found()
                    ),
                );
            }
        };
        self.pos += 1;
        let lit_at = self.at();
        let lit = self.literal()?;
        tested.compare(op, lit, lit_at)
    }

    /// `"[" literal ("," literal)* "]"` after `in`, each literal with its offset.
    fn literal_list(&mut self) -> Result<Vec<(usize, Lit)>, RuleError> {
        self.expect(Tok::LBracket, "`[` to start the list after `in`")?;
        let mut lits = Vec::new();
        loop {
            let lit_at = self.at();
            lits.push((lit_at, self.literal()?));
            if self.eat(&Tok::RBracket) {
                break;
            }
            self.expect(Tok::Comma, "`,` or `]`")?;
        }
        Ok(lits)
    }

    fn literal(&mut self) -> Result<Lit, RuleError> {
        let lit = match self.peek().map(|t| &t.kind) {
            Some(Tok::Num(d)) => Lit::Num(*d),
            Some(Tok::Str(s)) => Lit::Str(s.clone()),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Lit::Bool(true),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Lit::Bool(false),
            _ => {
                return err(
                    self.at(),
                    format!(
                        "expected a value (a number, a \"string\", true or false), found {}",
                        self.found()
                    ),
                )
            }
        };
        self.pos += 1;
        Ok(lit)
    }

    /// A path segment: a name, or a quoted string (`events."Product Viewed"`).
    fn segment(&mut self) -> Result<String, RuleError> {
        let s = match self.peek().map(|t| &t.kind) {
            Some(Tok::Ident(s)) | Some(Tok::Str(s)) => s.clone(),
            _ => {
                return err(
                    self.at(),
                    format!("expected a field name, found {}", self.found()),
                )
            }
        };
        self.pos += 1;
        Ok(s)
    }

    /// `"days_since" "(" operand ")"`, or a path; with the name errors call it by.
    fn operand(&mut self) -> Result<(Operand, String), RuleError> {
        if self.keyword("days_since") {
            return self.days_since();
        }
        let at = self.at();
        let path = self.path()?;
        let name = path_name(&path);
        let operand = check::field(&path, &name, at, &mut self.needs)?;
        Ok((operand, name))
    }

    /// `days_since(operand)`, from the keyword on.
    fn days_since(&mut self) -> Result<(Operand, String), RuleError> {
        self.pos += 1;
        self.expect(Tok::LParen, "`(` after `days_since`")?;
        let inner_at = self.at();
        let (inner, name) = self.operand()?;
        self.expect(Tok::RParen, "`)`")?;
        check::days_since(inner, &name, inner_at, &mut self.needs)
    }

    /// `segment ("." segment)*`.
    fn path(&mut self) -> Result<Vec<String>, RuleError> {
        let mut path = vec![self.segment()?];
        while self.eat(&Tok::Dot) {
            path.push(self.segment()?);
        }
        Ok(path)
    }
}

/// A path as errors spell it: plain names as they are, other segments quoted.
fn path_name(path: &[String]) -> String {
    path.iter()
        .map(|p| {
            if p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                p.clone()
            } else {
                format!("{p:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}
