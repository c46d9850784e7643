"""The bundled demo pairs: sentiment-and-brevity control for a shop's chat assistant.

After the DPO paper's sentiment case study: the preferred reply is brief,
warm and on topic; the rejected one is negative, curt, or rambles off topic.
Prompts are customer messages in chat form (some multi-turn, some with a
system message), built from templates written for this project and tagged
with a slice. Round-0 static pairs cover mostly the easy slices
(`product_question`, `thanks`, `small_talk`) and only a few of the hard ones
(`complaint`, `bad_news`), so the online rounds have failure slices to fix.

`python -m alignloop.demo.pairs` rewrites `loop/demo/data/static_pairs.jsonl`.
"""

from __future__ import annotations

import random
from pathlib import Path

from alignloop.records import Message, Pair

SLICES = ("product_question", "thanks", "small_talk", "complaint", "bad_news")
HARD_SLICES = ("complaint", "bad_news")
# Share of each slice in the round-0 static set: the hard slices are rare on purpose.
ROUND0_MIX = {"product_question": 0.36, "thanks": 0.25, "small_talk": 0.27,
              "complaint": 0.06, "bad_news": 0.06}
BUNDLED_PATH = Path(__file__).parent / "data" / "static_pairs.jsonl"

SYSTEM_PROMPTS = (
    "You are the chat assistant of Larkspur & Co., an online shop for home and outdoor goods. "
    "Reply to customers in a friendly, helpful way.",
    "You help customers of Larkspur & Co. with questions about products, orders and deliveries.",
    "You are a customer support assistant. Be kind and keep your answers short.",
)

# (product, short name, [(question, answer), ...]); the answers are the facts a good reply gives.
PRODUCTS = (
    ("Trailhead 28L backpack", "backpack", (
        ("Will a 15-inch laptop fit in the padded sleeve?",
         "the sleeve fits laptops up to 15 inches, with a little room to spare"),
        ("Is it waterproof enough for hiking in the rain?",
         "it's water-resistant, and a rain cover is tucked into the bottom pocket for real downpours"))),
    ("Cedar pour-over kettle", "kettle", (
        ("Does it work on an induction hob?", "the steel base works on induction, gas and electric hobs"),
        ("How much water does it hold?", "it holds 1.2 litres, which is about four mugs"))),
    ("Halo desk lamp", "lamp", (
        ("Can I dim it, or is it just on and off?",
         "you can dim it: hold the touch button to go from a soft glow to full brightness"),
        ("Does it need batteries?", "no batteries needed; it runs off the USB-C cable in the box"))),
    ("Stride trail running shoes", "shoes", (
        ("Do they run true to size?",
         "most people take their usual size, and half a size up works best if you're between sizes"),
        ("Are they okay for wide feet?", "they come in a wide fit too, and the toe box is roomy in both"))),
    ("Quiet Hours headphones", "headphones", (
        ("How long does the battery last with noise cancelling on?",
         "about 30 hours with noise cancelling on, and a 10-minute charge gives around 3 more"),
        ("Can they connect to my laptop and my phone at the same time?",
         "they pair with two devices at once and switch between them automatically"))),
    ("Meadow yoga mat", "yoga mat", (
        ("Does it get slippery when I sweat?", "the natural rubber top stays grippy even in hot classes"),
        ("How thick is it?", "it's 5 mm thick, soft on the knees but still steady for balance poses"))),
    ("Grindstone burr grinder", "grinder", (
        ("Can it grind fine enough for espresso?", "the five finest settings are made for espresso"),
        ("Is it very loud?", "it's quieter than most blade grinders, about as loud as a kitchen fan"))),
    ("Fern ceramic planter", "planter", (
        ("Does it have a drainage hole?", "it has a drainage hole and comes with a matching saucer"),
        ("Can it stay outdoors over winter?",
         "it's frost-resistant, though we suggest bringing it inside during hard freezes"))),
)

GREETINGS = ("Hi there!", "Hello!", "Hey!", "Good morning!", "Hi!", "")
CONTEXTS = (
    "I've been eyeing the {product} for a few weeks now and I think I'm finally ready to order.",
    "My sister has the {product} and keeps telling me how much she likes them, so I'm thinking "
    "of getting the same for myself.",
    "I'm putting together a birthday present for my partner and I've narrowed it down to the "
    "{product}, but I want to double-check one thing first.",
    "I read the product page for the {product} and a handful of reviews, but I couldn't find a "
    "clear answer anywhere.",
    "We're moving into a new flat next month and I'm slowly replacing old things, starting with "
    "the {product}.",
)
EXTRAS = ("I'd like to order before the weekend if possible.", "Thanks in advance!",
          "Sorry if this is a silly question.",
          "It's a bit of a splurge for me, so I want to get it right.", "", "")
OPENERS = ("Great question!", "Thanks for asking!", "Good news:", "Happy to help!", "Sure thing!")
CLOSERS = ("Enjoy your new {short}!", "Let me know if anything else comes up.",
           "Hope that helps you decide!", "")

# Earlier exchanges that make some prompts multi-turn: (user, assistant).
HISTORY = (
    ("Hi, are you open on weekends?",
     "Hi! Our chat team is here every day from 8am to 8pm, weekends included."),
    ("Do you ship to Canada?", "We do! Delivery to Canada usually takes five to seven business days."),
    ("I placed an order yesterday, number 48213. Has it shipped yet?",
     "It has! It left our warehouse this morning, and a tracking email is on its way."),
    ("Is there a discount for first-time customers?",
     "Yes, new customers get 10% off their first order with the code WELCOME10."),
    ("Can I change the delivery address on an order I just placed?",
     "Of course. I've updated it, and the new address is in your confirmation email."),
)

# (user message, chosen reply) per slice; {product} and {short} are filled in.
THANKS = (
    ("I just wanted to drop a quick note to say thank you. The {product} arrived two days early, "
     "right before my dad's birthday, and he's absolutely thrilled.",
     "Thank you so much for telling us! We're really glad the {short} arrived in time. "
     "Happy birthday to your dad!"),
    ("Last week one of your team helped me swap the {product} for a different colour, and the whole "
     "thing took five minutes. I don't usually write in, but that was such a nice change from "
     "other shops.",
     "That's lovely to hear, thank you! I'll pass your note on to the team; it will make their day."),
    ("Thank you for the handwritten card that came with my {product}! It honestly made my day, "
     "and I've already told two friends about you.",
     "Aw, thank you! We love writing those cards. Enjoy the {short}, and thanks for spreading the word!"),
    ("Just a short message: I'm even happier with the {product} than I expected to be, and the "
     "packaging was all recyclable, which I really appreciate.",
     "Thank you for the kind words! We're so happy you're enjoying the {short}, and glad the "
     "packaging mattered to you too."),
)
SMALL_TALK = (
    ("It's been raining all day here and I'm stuck inside, so I'm just browsing your shop with a "
     "cup of tea. How's your day going?",
     "It's going well, thank you! Rain, tea and a bit of browsing sounds like a cosy afternoon. "
     "Shout if anything catches your eye!"),
    ("I start a new job on Monday and I'm a bit nervous, to be honest. Any tips for a good first day?",
     "Congratulations on the new job! Sleep well, ask plenty of questions and be kind to yourself. "
     "You'll do great!"),
    ("What's your favourite thing in the shop? I'm always curious what the people who work there "
     "actually like.",
     "I love the Grindstone burr grinder; fresh coffee makes every morning better! What are you into?"),
    ("I finally finished the half marathon I've been training for all year! I just had to tell "
     "someone.",
     "Congratulations, that's a huge achievement! All those months of training paid off. "
     "Enjoy a well-earned rest!"),
    ("Any weekend plans? I'm thinking of going camping for the first time and I can't decide if "
     "I'm excited or terrified.",
     "How exciting! First camping trips are so much fun. Pack an extra warm layer and enjoy the stars!"),
    ("I've been learning to bake bread and my loaves keep coming out flat. Is that a normal "
     "beginner thing?",
     "Totally normal, so don't worry! Flat loaves often just need a little more rising time. "
     "You'll get there!"),
)
COMPLAINTS = (
    ("I'm honestly really disappointed. The {product} I ordered arrived damaged, and the box "
     "looked like it had been dropped from a height. It was meant to be a gift "
     "for this weekend and now I don't know what to do.",
     "I'm so sorry the {short} arrived damaged, especially right before a gift. I've sent a free "
     "replacement by express delivery today, and you don't need to return the broken one."),
    ("This is the second time I've had to write in. I was promised a refund for the {product} two "
     "weeks ago and nothing has shown up in my account. Nobody has answered my emails either. "
     "What is going on?",
     "I'm really sorry for the wait and the silence. I've pushed your refund through now; it will "
     "reach your account within two days, and I'll check that it does."),
    ("My order said it would arrive on Tuesday. It's Friday, the tracking hasn't moved in four "
     "days, and I needed the {product} for a trip tomorrow. I'm pretty frustrated.",
     "I'm sorry, that's really stressful before a trip. I've sent a new {short} by next-day "
     "delivery at no cost, and we'll refund the first one if it turns up."),
)
BAD_NEWS = (
    ("I've been waiting for the {product} to come back in stock for ages. Any idea when it will be "
     "available again?",
     "Thanks so much for your patience! Sadly the {short} won't be back until next month, but I "
     "can reserve one for you and email you the moment it ships."),
    ("Can I still return the {product}? I bought it about six weeks ago but only just opened the box.",
     "I'm sorry, our return window is 30 days, so I can't refund it this time. I'd be glad to "
     "offer store credit instead, if that would help."),
    ("Will the {product} arrive by Friday if I order today? It's for a party on Saturday.",
     "I'm sorry, standard delivery won't make it by Friday. Express shipping would get it to you "
     "on Thursday, and I'm happy to add a gift note!"),
)

# Rejected replies, per style. Negative and curt ones are per slice; rambling ones fit anywhere.
NEGATIVE = {
    "product_question": ("Honestly, I wouldn't bother with the {short}. Most people end up "
                         "disappointed, and returns are a hassle.",
                         "That's a pretty basic question. Nobody here has time to read the "
                         "product page for you."),
    "thanks": ("Okay. We get a lot of messages, so this wasn't really necessary.",
               "Fine, but please only contact support when you actually have a problem."),
    "small_talk": ("I'm not here to chat. Ask about an order or I'm closing this.",
                   "Nobody really cares about that, to be honest. Do you need something or not?"),
    "complaint": ("That's not our fault. The courier handles delivery, so take it up with them.",
                  "You should have read the terms before ordering. These things take as long "
                  "as they take."),
    "bad_news": ("No. You should have ordered earlier, like everyone else did.",
                 "It's gone and it's not coming back any time soon. Try another shop."),
}
CURT = {
    "product_question": ("It's on the product page. Look it up yourself.",
                         "Depends. Check the specs before asking, please."),
    "thanks": ("Noted. Is there anything else, or are we done?",
               "Okay, thanks. Closing this chat now."),
    "small_talk": ("Okay. Do you have an actual order question?",
                   "Sure, whatever. What is it you want from us?"),
    "complaint": ("Just fill in the returns form on the website.",
                  "Email the claims team. They'll get to it eventually."),
    "bad_news": ("Not possible, sorry. That's just how it is.",
                 "Out of stock. No date. Check back some time."),
}
RAMBLING = (
    "Well, there's a lot to say about that. Our warehouse moved last spring, and the new building "
    "has a much bigger loading dock, although the parking is a whole saga of its own. Anyway, I've "
    "been meaning to tidy my desk, it's covered in sticky notes. Where was I? Lots of things could "
    "be true here, hard to say really.",
    "Interesting. I was reading about the history of shipping containers last night, and it turns "
    "out they completely changed how ports worked in the 1960s. Before that, loading a ship could "
    "take days! That's logistics for you. There are so many factors in everything, and honestly I "
    "could talk about cranes for hours.",
    "Hmm, let me think. Our company started in a garage, like a lot of companies do, and the "
    "founder's dog used to sit by the door and greet every delivery driver. The dog has retired "
    "now, of course. We also have a newsletter that covers all sorts of things, mostly not this. "
    "Anyway, who knows, really.",
)


def _fill(text: str, product: tuple) -> str:
    return text.format(product=product[0], short=product[1])


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _scenario(rng: random.Random, slice_: str) -> tuple[str, str, tuple]:
    """(final user message, chosen reply, product) for one prompt of `slice_`."""
    product = rng.choice(PRODUCTS)
    if slice_ == "product_question":
        question, answer = rng.choice(product[2])
        user = _join(rng.choice(GREETINGS), rng.choice(CONTEXTS), question, rng.choice(EXTRAS))
        chosen = _join(rng.choice(OPENERS), answer[0].upper() + answer[1:] + ".", rng.choice(CLOSERS))
        return _fill(user, product), _fill(chosen, product), product
    table = {"thanks": THANKS, "small_talk": SMALL_TALK, "complaint": COMPLAINTS,
             "bad_news": BAD_NEWS}[slice_]
    user, chosen = rng.choice(table)
    greeting = rng.choice(GREETINGS) if slice_ != "complaint" else ""
    return _fill(_join(greeting, user), product), _fill(chosen, product), product


def _rejected(rng: random.Random, slice_: str, product: tuple) -> str:
    style = rng.choices(("negative", "curt", "rambling"), weights=(0.4, 0.25, 0.35))[0]
    if style == "rambling":
        return rng.choice(RAMBLING)
    pool = NEGATIVE if style == "negative" else CURT
    return _fill(rng.choice(pool[slice_]), product)


def _prompt(rng: random.Random, user: str) -> list[Message]:
    messages: list[Message] = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    n_earlier = rng.choices((0, 1, 2, 3), weights=(0.45, 0.25, 0.2, 0.1))[0]
    for u, a in rng.sample(HISTORY, k=n_earlier):
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": user})
    return messages


def _slice_counts(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Split n over the slices in proportion to `mix` (largest remainders get the rest)."""
    counts = {s: int(n * w) for s, w in mix.items()}
    by_remainder = sorted(mix, key=lambda s: counts[s] - n * mix[s])
    for s in by_remainder[: n - sum(counts.values())]:
        counts[s] += 1
    return counts


def static_pairs(n: int = 96, seed: int = 0) -> list[Pair]:
    """`n` distinct demo pairs, the same for the same seed, in a seeded shuffled order."""
    rng = random.Random(seed)
    pairs: list[Pair] = []
    seen: set[str] = set()
    for slice_, count in _slice_counts(n, ROUND0_MIX).items():
        made, tries = 0, 0
        while made < count:
            tries += 1
            if tries > 100 * count:
                raise ValueError(f"cannot make {count} distinct '{slice_}' pairs from the templates")
            user, chosen, product = _scenario(rng, slice_)
            pair = Pair(prompt=_prompt(rng, user), chosen=chosen,
                        rejected=_rejected(rng, slice_, product), slice=slice_)
            if pair.pair_id not in seen:
                seen.add(pair.pair_id)
                pairs.append(pair)
                made += 1
    rng.shuffle(pairs)
    return pairs


def write_static_pairs(path: str | Path = BUNDLED_PATH, n: int = 96, seed: int = 0) -> Path:
    """Write the pairs in the conversational format that `alignloop.data.read_pairs` reads."""
    from alignloop.artifacts import write_jsonl

    rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}], "slice": p.slice}
            for p in static_pairs(n, seed)]
    return write_jsonl(Path(path), rows)


if __name__ == "__main__":
    print(f"wrote {write_static_pairs()}")
