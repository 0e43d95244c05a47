//! Statements built at run time (lists of rows) and the values bound to their numbered
//! parameters. A statement can be numbered from any parameter on, so that on SQLite several
//! of them make one script, one trip to the connection's thread; on PostgreSQL each is
//! numbered from `$1`.

/// A value bound to a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Value<'a> {
    Text(&'a str),
    Integer(i64),
}

/// SQL and its values, in the order of its parameters.
#[derive(Debug)]
pub(super) struct Statement<'a> {
    pub sql: String,
    pub values: Vec<Value<'a>>,
    /// The number of the first parameter.
    first: usize,
}

impl<'a> Statement<'a> {
    /// An empty statement whose first parameter will be `$first`.
    pub fn numbered_from(first: usize) -> Statement<'a> {
        Statement {
            sql: String::new(),
            values: Vec::new(),
            first: first.max(1),
        }
    }

    /// Binds `value` to the next parameter; its placeholder.
    pub fn param(&mut self, value: Value<'a>) -> String {
        self.values.push(value);
        format!("${}", self.first + self.values.len() - 1)
    }

    /// The number the parameter after this statement's last takes.
    pub fn next_param(&self) -> usize {
        self.first + self.values.len()
    }

    /// `statements` as one script in one transaction (SQLite: `BEGIN IMMEDIATE` takes the write
    /// lock at once), each numbered on from the one before.
    pub fn transaction(statements: Vec<Statement<'a>>) -> Statement<'a> {
        let mut script = Statement {
            sql: String::from("BEGIN IMMEDIATE;\n"),
            values: Vec::new(),
            first: 1,
        };
        for statement in statements {
            debug_assert_eq!(statement.first, script.next_param(), "numbered on from the one before");
            script.sql.push_str(&statement.sql);
            script.sql.push_str(";\n");
            script.values.extend(statement.values);
        }
        script.sql.push_str("COMMIT;");
        script
    }

    /// The statement with its values bound, unprepared (built at run time, it is seldom the
    /// same twice).
    pub fn query<DB>(&self) -> sqlx::query::Query<'static, DB, DB::Arguments>
    where
        DB: sqlx::Database + sqlx::database::HasStatementCache,
        for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.sql.clone()));
        for value in &self.values {
            query = match *value {
                Value::Text(text) => query.bind(text),
                Value::Integer(n) => query.bind(n),
            };
        }
        query.persistent(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_of_a_transaction_are_numbered_on() {
        let mut first = Statement::numbered_from(1);
        let a = first.param(Value::Text("a"));
        first.sql = format!("DELETE FROM t WHERE k = {a}");
        let mut second = Statement::numbered_from(first.next_param());
        let (b, c) = (second.param(Value::Integer(2)), second.param(Value::Integer(3)));
        second.sql = format!("UPDATE t SET v = {c} WHERE id = {b}");
        let script = Statement::transaction(vec![first, second]);
        assert_eq!(
            script.sql,
            "BEGIN IMMEDIATE;\nDELETE FROM t WHERE k = $1;\nUPDATE t SET v = $3 WHERE id = $2;\nCOMMIT;"
        );
        assert_eq!(
            script.values,
            vec![Value::Text("a"), Value::Integer(2), Value::Integer(3)]
        );
    }
}
