"""Schemas and prompts for l0.structured on SmolLM2 (tests/engine/vllm/test_content_e2e.py,
bench/bench_structured.py): Pydantic models of the kinds applications ask
for (flat records, enums, lists, nested objects, optional fields, numbers
with bounds, a cross-field rule the JSON schema can't state)."""
from __future__ import annotations

from enum import Enum
from typing import Optional

from pydantic import BaseModel, Field, field_validator, model_validator


class Person(BaseModel):
    name: str
    age: int


class Colour(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"
    yellow = "yellow"


class Fruit(BaseModel):
    name: str
    colour: Colour


class Planets(BaseModel):
    planets: list[str]


class Address(BaseModel):
    street: str
    city: str
    country: str


class Company(BaseModel):
    name: str
    founded: int
    headquarters: Address


class Sentiment(BaseModel):
    text: str
    sentiment: str = Field(pattern="^(positive|negative|neutral)$")
    confidence: float = Field(ge=0, le=1)


class Book(BaseModel):
    title: str
    author: str
    year: Optional[int] = None


class Recipe(BaseModel):
    title: str
    ingredients: list[str]
    minutes: int


class Capital(BaseModel):
    country: str
    capital: str


class Adult(BaseModel):
    name: str
    age: int

    @field_validator("age")
    @classmethod
    def of_age(cls, v: int) -> int:  # a rule outside the JSON schema: SmolLM2 answers 20, re-asking fixes it
        if v < 21:
            raise ValueError("age must be at least 21")
        return v


class Event(BaseModel):
    name: str
    start_year: int
    end_year: int

    @model_validator(mode="after")
    def ends_after_start(self) -> "Event":  # a rule a JSON schema can't state: only re-asking fixes it
        if self.end_year < self.start_year:
            raise ValueError("end_year must not be before start_year")
        return self


class Todo(BaseModel):
    task: str
    done: bool
    priority: int = Field(ge=1, le=5)


class Boolean(BaseModel):
    question: str
    answer: bool


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


CASES = {
    "person": (Person, user("Invent a person and give their name and age as JSON.")),
    "fruit": (Fruit, user("Name a fruit and its colour as JSON.")),
    "planets": (Planets, user("List the planets of the solar system as JSON.")),
    "company": (Company, user("Describe a famous technology company as JSON: its name, the year it was founded "
                              "and its headquarters address.")),
    "sentiment": (Sentiment, user("Classify the sentiment of 'I love this phone, the battery lasts forever.' "
                                  "as JSON.")),
    "book": (Book, user("Name a classic novel, its author and the year it was published, as JSON.")),
    "recipe": (Recipe, user("Give a simple pancake recipe as JSON with its ingredients and cooking time in "
                            "minutes.")),
    "capital": (Capital, user("What is the capital of France? Answer as JSON.")),
    "adult": (Adult, user("Invent a person and give their name and age as JSON.")),
    "event": (Event, user("Describe World War II as JSON with the years it started and ended.")),
    "todo": (Todo, user("Write one item of a to-do list as JSON.")),
    "boolean": (Boolean, user("Is the Earth round? Answer as JSON.")),
}
