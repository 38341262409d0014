"""The customers' Telegram bot: a client of cardflow's public `/v1` API.

api.py       the API calls the bot makes, with its own key
handlers.py  what the bot answers: /start (linking), balance, cards with
             freeze and unfreeze buttons, last transactions with decline reasons
"""
