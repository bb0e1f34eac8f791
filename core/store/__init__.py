"""State under DATA_DIR (SQLite) or in PostgreSQL: one module per concern, behind the Protocols
of `core.store.interfaces`, every store written once against the `Database` engine (engine.py).

  engine.py      the two engines (SQLiteDatabase, PostgresDatabase) and the portable-SQL rules
  schema.py      the numbered migrations of gateway.db (sqlite-utils `Migrations`)
  db.py          open_database (WAL, migrations), counters
  journal.py     the inbox journal          (JournalStore)
  history.py     the conversation history   (HistoryStore)
  chats.py       per-chat delivery facts    (ChatStore)
  access.py      access decisions and pairing codes (AccessStore)
  interfaces.py  the Protocols and the records they return

Other concerns keep their classes next to their logic, over the same `Database`, and satisfy
Protocols declared here too (DLQ: DeadLetterStore, outbox: OutboxStore); usage, hot state,
artifacts and spans have their own modules. This package re-exports exactly the names the rest
of the code imports from `core.store`.
"""

from core.store.chats import Chats
from core.store.db import GATEWAY_DB, bump_counter, open_database, open_sqlite, read_counter
from core.store.engine import Database, PostgresDatabase, SQLiteDatabase
from core.store.history import History
from core.store.interfaces import HistoryMessage
from core.store.journal import Journal
from core.store.schema import migrations

__all__ = ["GATEWAY_DB", "Chats", "Database", "History", "HistoryMessage", "Journal", "PostgresDatabase",
           "SQLiteDatabase", "bump_counter", "migrations", "open_database", "open_sqlite", "read_counter"]
