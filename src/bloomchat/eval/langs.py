"""Language codes and names for eval: the one table in `bloomchat.langs`, re-exported."""

from bloomchat.langs import (  # noqa: F401
    LANG_NAMES,
    _ALIASES,
    _BY_NAME,
    lang_from_path,
    lang_from_path_tokens,
    lang_name,
    lookup_lang,
    normalize_lang,
    parse_lang_list,
)
