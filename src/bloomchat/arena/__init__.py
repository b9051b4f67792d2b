"""Human evaluation arena: native speakers compare two systems' replies blind, side by side.

    bloomchat arena init --db arena.sqlite                 # prints the admin token
    bloomchat arena import-prompts ../shared/data/eval_prompts_vicuna80_12lang
    bloomchat arena import-replies replies_gpt4.jsonl replies_bloomchat.jsonl
    bloomchat arena add-rater Li --langs zh
    bloomchat arena serve --port 8000
    bloomchat arena results --out arena-results/

Modules: `db` (tables, migrations), `prompt_sets` (file layouts), `store` (import),
`assign` (which pair a rater sees next), `stats` (shares, bootstrap, Bradley-Terry, agreement),
`report` (tables, charts, CSV/JSON), `app` (FastAPI + static page), `generate`, `cli`.
"""
