"""Regenerate data/travel_sample.jsonl: the project's own small prompt/response set.

Deterministic (no randomness): cities x question kinds, answers filled from a small fact table.
It is what the embedded tiny model is pre-trained and fine-tuned on, so a fresh clone runs without
../shared/data. Run: python data/make_sample.py
"""

import json
from pathlib import Path

CITIES = {
    "Paris": ("France", "spring", "the Louvre, the Eiffel Tower and the Musee d'Orsay", "croissants and steak frites", "the metro"),
    "Rome": ("Italy", "autumn", "the Colosseum, the Pantheon and the Vatican Museums", "cacio e pepe and supply", "walking and the bus"),
    "Tokyo": ("Japan", "spring", "Senso-ji, Shibuya Crossing and the Meiji Shrine", "sushi and ramen", "the JR and metro lines"),
    "Kyoto": ("Japan", "autumn", "Fushimi Inari, Kinkaku-ji and the Arashiyama bamboo grove", "kaiseki and matcha sweets", "the city bus"),
    "New York": ("the United States", "autumn", "Central Park, the Met and the Brooklyn Bridge", "bagels and pizza", "the subway"),
    "London": ("the United Kingdom", "summer", "the British Museum, the Tower of London and the South Bank", "fish and chips and a Sunday roast", "the Underground"),
    "Barcelona": ("Spain", "late spring", "the Sagrada Familia, Park Guell and the Gothic Quarter", "tapas and paella", "the metro and walking"),
    "Lisbon": ("Portugal", "spring", "Belem Tower, the Alfama and the Jeronimos Monastery", "pasteis de nata and grilled sardines", "tram 28 and the metro"),
    "Istanbul": ("Turkey", "spring", "the Hagia Sophia, the Blue Mosque and the Grand Bazaar", "kebabs and baklava", "the tram and the ferries"),
    "Cairo": ("Egypt", "winter", "the Pyramids of Giza, the Egyptian Museum and Khan el-Khalili", "koshari and ful medames", "taxis and the metro"),
    "Sydney": ("Australia", "spring", "the Opera House, Bondi Beach and the Harbour Bridge", "seafood and flat whites", "the ferries and trains"),
    "Cape Town": ("South Africa", "summer", "Table Mountain, the V&A Waterfront and Cape Point", "braai and bobotie", "car hire and ride shares"),
    "Rio de Janeiro": ("Brazil", "autumn", "Christ the Redeemer, Sugarloaf Mountain and Copacabana", "feijoada and acai", "the metro and taxis"),
    "Mexico City": ("Mexico", "spring", "the Zocalo, Chapultepec Park and Teotihuacan", "tacos al pastor and mole", "the metro"),
    "Bangkok": ("Thailand", "winter", "the Grand Palace, Wat Pho and the floating markets", "pad thai and mango sticky rice", "the BTS Skytrain and river boats"),
    "Reykjavik": ("Iceland", "summer", "the Golden Circle, the Blue Lagoon and Hallgrimskirkja", "lamb soup and skyr", "a rental car"),
    "Vienna": ("Austria", "spring", "Schonbrunn Palace, St. Stephen's Cathedral and the Belvedere", "schnitzel and sachertorte", "the U-Bahn and trams"),
    "Prague": ("the Czech Republic", "late spring", "Prague Castle, Charles Bridge and the Old Town Square", "goulash and trdelnik", "trams"),
    "Amsterdam": ("the Netherlands", "spring", "the Rijksmuseum, the Anne Frank House and the canals", "stroopwafels and herring", "bicycles and trams"),
    "Singapore": ("Singapore", "all year", "Gardens by the Bay, Marina Bay and Sentosa", "chicken rice and laksa", "the MRT"),
    "Marrakech": ("Morocco", "spring", "Jemaa el-Fnaa, the Majorelle Garden and the souks", "tagine and mint tea", "walking and petit taxis"),
    "Vancouver": ("Canada", "summer", "Stanley Park, Granville Island and Grouse Mountain", "salmon and poutine", "the SkyTrain"),
    "Buenos Aires": ("Argentina", "spring", "La Boca, Recoleta Cemetery and the Teatro Colon", "asado and empanadas", "the Subte"),
    "Seoul": ("South Korea", "autumn", "Gyeongbokgung Palace, Bukchon Hanok Village and N Seoul Tower", "bibimbap and Korean barbecue", "the subway"),
}

QUESTIONS = [
    ("What should I see in {city}?", "In {city}, do not miss {sights}. Plan at least three days to see them without rushing."),
    ("When is the best time to visit {city}?", "The best time to visit {city} is {season}, when the weather is pleasant and the crowds are smaller."),
    ("What food should I try in {city}?", "When you are in {city}, try {food}. Local markets are a good place to taste them."),
    ("How do I get around {city}?", "The easiest way to get around {city} is {transport}. Buy a day pass if you plan many trips."),
    ("Which country is {city} in?", "{city} is in {country}. Check the entry rules for {country} before you book."),
    ("Can you plan one day in {city}?", "Start the morning at the first of {sights}, have lunch with {food}, and use {transport} to reach the rest in the afternoon."),
    ("Is {city} good for a first trip abroad?", "Yes, {city} is a friendly choice for a first trip: {transport} is easy to use and {sights} are close together."),
    ("What should I pack for {city} in {season}?", "For {city} in {season}, pack comfortable shoes, layers for the evening and a small umbrella."),
]


def records():
    for city, (country, season, sights, food, transport) in CITIES.items():
        fields = dict(city=city, country=country, season=season, sights=sights, food=food, transport=transport)
        for prompt, response in QUESTIONS:
            yield {"prompt": prompt.format(**fields), "response": response.format(**fields)}


if __name__ == "__main__":
    out = Path(__file__).with_name("travel_sample.jsonl")
    with out.open("w", encoding="utf-8") as f:
        for rec in records():
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
